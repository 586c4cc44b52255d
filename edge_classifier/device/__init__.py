"""The device: the capture/inference loop, its start and signals, sd_notify, buttons, keyboard
and the built-in demo."""
