"""The kit under Django's (sync) TestCase: async test methods, and async_to_sync
from a plain one. Handlers that use the ORM see the test's transaction, and
what they write is rolled back with it."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import TestCase

from consumers.slack import SlackConsumer
from consumers.testing import SlackCommunicator


class Signup(SlackConsumer):
    def on_message(self, ctx):  # plain def: runs in a thread with database access
        name = ctx.text.removeprefix("signup ")
        User.objects.create_user(name)
        async_to_sync(ctx.say)(f"welcome {name}, user #{User.objects.count()}")


class KitInDjangoTestCase(TestCase):
    @classmethod
    def setUpClass(cls):
        call_command("migrate", verbosity=0, run_syncdb=True)
        super().setUpClass()

    def setUp(self):
        User.objects.create_user("existing")  # only this test's transaction has it

    async def test_a_async_test_method(self):
        async with SlackCommunicator(Signup) as slack:
            await slack.message("signup alice")
            self.assertEqual((await slack.receive_send())["text"], "welcome alice, user #2")
        self.assertTrue(await User.objects.filter(username="alice").aexists())

    def test_b_sync_test_method_with_async_to_sync(self):
        async def scenario():
            async with SlackCommunicator(Signup) as slack:
                await slack.message("signup bob")
                return await slack.receive_send()

        self.assertEqual(async_to_sync(scenario)()["text"], "welcome bob, user #2")
        self.assertTrue(User.objects.filter(username="bob").exists())

    def test_c_what_handlers_wrote_was_rolled_back(self):
        self.assertEqual(sorted(User.objects.values_list("username", flat=True)), ["existing"])
