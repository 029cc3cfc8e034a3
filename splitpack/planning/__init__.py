"""splitpack.planning: the latency model, the online transfer model, the per-request selector
and the choice of a bundle's variant set. numpy only; imports ``splitpack.formats`` at most."""
