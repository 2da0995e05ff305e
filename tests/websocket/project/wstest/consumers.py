"""Consumers for the WebSocket end-to-end tests."""

import json

from consumers.websocket import InvalidGroupName, WebSocketConsumer, WebSocketContext, group_name
from gateways.core.specs import load_schema


class RejectConsumer(WebSocketConsumer):
    """Refuses every connection."""

    async def connect(self, ws: WebSocketContext) -> None:
        await ws.close()


class StateConsumer(WebSocketConsumer):
    """Accepts with a state and a subprotocol, then reports what each message carries."""

    async def connect(self, ws: WebSocketContext) -> None:
        protocol = "chat.v2" if "chat.v2" in ws.message["subprotocols"] else None
        await ws.accept(subprotocol=protocol, headers=[[b"x-demo", b"yes"]],
                        state={"user": ws.kwargs.get("user", "?"), "query": ws.message["query_string"].decode()})

    async def receive(self, ws: WebSocketContext) -> None:
        if ws.text == "boom":
            raise RuntimeError("handler failure on purpose")
        if ws.text == "bad":
            await ws.send_to(ws.reply_channel, {"type": "websocket.send", "text": 42})
            return
        await ws.send(text=json.dumps({"order": ws.order, "state": ws.state, "kwargs": ws.kwargs,
                                       "path": ws.path, "text": ws.text}))


class CheckingConsumer(WebSocketConsumer):
    """Echoes, and says so when a message from the gateway breaks the spec."""

    schema = load_schema("websocket")

    async def dispatch(self, message):
        problem = self.schema.problem(message)
        if problem and message.get("reply_channel"):
            await self.channel_layer.send(message["reply_channel"],
                                          {"type": "websocket.send", "text": f"INVALID {problem}"})
        await super().dispatch(message)

    async def receive(self, ws: WebSocketContext) -> None:
        await ws.send(text=ws.text, bytes=ws.bytes)


class RoomConsumer(WebSocketConsumer):
    """Joins the room named by the route's ``room`` and says so to the room at once;
    broadcasts each text to the room. ``who`` answers with the connection's reply
    channel and the room's members; ``raw`` tries the room's name unencoded."""

    @staticmethod
    def room(ws: WebSocketContext) -> str:
        return group_name("room", ws.kwargs["room"])

    async def connect(self, ws: WebSocketContext) -> None:
        await ws.accept()
        await ws.group_add(self.room(ws))
        await ws.broadcast(self.room(ws), text="joined")

    async def receive(self, ws: WebSocketContext) -> None:
        if ws.text == "who":
            await ws.send(text=json.dumps({"me": ws.reply_channel, "members": await ws.group_members(self.room(ws)),
                                           "group": self.room(ws)}))
        elif ws.text == "raw":
            try:
                await ws.broadcast(f"room.{ws.kwargs['room']}", text="raw")
            except InvalidGroupName as exc:
                await ws.send(text=f"refused: {exc}")
        else:
            await ws.broadcast(self.room(ws), text=ws.text)


class AutoStateConsumer(WebSocketConsumer):
    """On an auto-accepting route: sets the state, says ``ready``, then reports
    the state each message carries."""

    async def connect(self, ws: WebSocketContext) -> None:
        await ws.accept(state={"user": ws.kwargs["user"], "accepted": ws.accepted})
        await ws.send(text="ready")

    async def receive(self, ws: WebSocketContext) -> None:
        await ws.send(text=json.dumps(ws.state))


class SlowAcceptConsumer(WebSocketConsumer):
    """Joins its room before accepting, and accepts only when told to on the
    channel ``slowaccept.go``; reports its disconnect on ``slowaccept.done``."""

    async def connect(self, ws: WebSocketContext) -> None:
        await ws.group_add(group_name("slow", ws.kwargs["room"]))
        await self.channel_layer.receive("slowaccept.go")
        await ws.accept()

    async def disconnect(self, ws: WebSocketContext) -> None:
        await self.channel_layer.send("slowaccept.done", {"type": "done", "code": ws.code,
                                                          "reply_channel": ws.reply_channel})
