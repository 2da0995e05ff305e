"""The MQTT gateway: broker topics to channel messages and back (see protocol_specs/mqtt.md)."""
