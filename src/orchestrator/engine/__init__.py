"""The engine: the scheduler claims due devices and carries out the domain's decisions; the
controller advances waves, applies abort rules and completes campaigns."""
