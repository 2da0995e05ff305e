"""The WebSocket gateway: connections as websocket.* messages with a reply channel each."""
