"""What every layer stands on: one-line errors, atomic files, folder locks, seeds, the one way to speak
(`Reporter`), and the process of a run (`Process`: rank, device, precision, whether it writes) with the switches
set for it."""
