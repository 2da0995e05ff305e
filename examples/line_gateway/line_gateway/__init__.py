"""A toy line-based TCP protocol as a gateway plug-in.

Every line a client sends becomes a ``line.receive`` message on the
configured channel; a consumer answers with ``line.send`` on the message's
``reply_channel`` and the gateway writes that line back to the client.
"""
