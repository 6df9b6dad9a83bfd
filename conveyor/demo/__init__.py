"""Apps built on the library: the digits demo (``digits``) and the measured
bubble sweep (``sweep``). Users of the runtime and the profiler, at the top;
nothing in the library imports them."""
