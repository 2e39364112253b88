"""Device models: conductance mapping (this module's `mapping`), and, with the analog-substrate issue,
pulsed-update laws, inference noise and peripherals."""
