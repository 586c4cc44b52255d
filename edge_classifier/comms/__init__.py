"""Transports and commands: events, command parsing and routing, the output bus, stdout, MQTT
and Home Assistant discovery."""
