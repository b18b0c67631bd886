"""Runner wiring (Apache Beam) and the command-line entry points around it."""
