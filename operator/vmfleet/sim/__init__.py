"""A simulator of SONAS's and GPFS's clone commands behind a real SSH server (python -m vmfleet.sim).

Empty on purpose: an OpenSSH ForceCommand starts the interpreter (cli, fs) once per command, and loads
nothing else. The asyncssh server is `sim.server`.
"""
