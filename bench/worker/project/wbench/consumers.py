"""Echo consumers: answer each request on its reply channel with its conversation and number."""

from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer, SyncConsumer


class AsyncEcho(AsyncConsumer):
    async def bench_request(self, message):
        await self.channel_layer.send(message["reply_channel"],
                                      {"type": "bench.reply", "conv": message["conv"], "seq": message["seq"]})


class SyncEcho(SyncConsumer):
    def bench_request(self, message):
        async_to_sync(self.channel_layer.send)(message["reply_channel"],
                                               {"type": "bench.reply", "conv": message["conv"], "seq": message["seq"]})
