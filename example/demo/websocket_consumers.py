"""The demo's WebSocket consumers: `/echo/` and `/chat/<room>/`."""

from consumers.websocket import WebSocketConsumer, WebSocketContext, group_name


class EchoConsumer(WebSocketConsumer):
    """Sends every text and binary message back to its sender."""

    async def receive(self, ws: WebSocketContext) -> None:
        await ws.send(text=ws.text, bytes=ws.bytes)


class ChatConsumer(WebSocketConsumer):
    """Sends each text message to everyone in the connection's room."""

    async def connect(self, ws: WebSocketContext) -> None:
        await ws.accept()
        await ws.group_add(self.room(ws))

    async def receive(self, ws: WebSocketContext) -> None:
        if ws.text is not None:
            await ws.broadcast(self.room(ws), text=ws.text)

    @staticmethod
    def room(ws: WebSocketContext) -> str:
        return group_name("chat", ws.kwargs["room"])
