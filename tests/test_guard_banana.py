"""
The position-based Banana parser (appliance.replication.banana) against
Twisted's: the same items from the same bytes however they are split, the
same refusals of malformed input, the same limits.
"""

from __future__ import annotations

import random
from io import BytesIO

from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.spread import banana, jelly, pb
from twisted.trial.unittest import SynchronousTestCase

from appliance.replication import guard
from appliance.replication.banana import ClientBroker, PlainCalls, PositionParser

from .test_guard import integer, list_of


def _sink(base, depth: int, dialect: bytes = b"pb"):
    class Sink(base):
        def __init__(self):
            super().__init__(isClient=1)
            self.listStack = guard._Nesting(depth)
            self.setPrefixLimit(banana._PREFIX_LIMIT)
            self.currentDialect = dialect
            self.got = []

        def expressionReceived(self, item):
            self.got.append(item)

    return Sink()


class _Fast(PositionParser, banana.Banana):
    pass


def feed(base, data: bytes, cuts=(), depth: int = guard.MAX_DEPTH, dialect: bytes = b"pb"):
    """
    The items a parser of class C{base} gets from C{data} delivered in
    pieces cut at C{cuts}, and the type of what it raised (or None).
    """
    sink = _sink(base, depth, dialect)
    edges = [0, *sorted(set(cuts)), len(data)]
    try:
        for a, b in zip(edges, edges[1:]):
            if b > a:
                sink.dataReceived(data[a:b])
    except NotImplementedError:
        # Twisted's parser refuses an unknown type byte, or vocabulary
        # outside the pb dialect, this way; ours with a BananaError.
        return sink.got, banana.BananaError
    except Exception as e:
        return sink.got, type(e)
    return sink.got, None


def encode(obj, dialect: bytes = b"pb") -> bytes:
    b = banana.Banana()
    b.setPrefixLimit(banana._PREFIX_LIMIT)
    b.currentDialect = dialect
    out = BytesIO()
    b._encode(obj, out.write)
    return out.getvalue()


def long_prefix(n: int, kind: bytes) -> bytes:
    return b"\x01" * n + kind


#: Expressions as PB sends them: vocabulary, every kind of int, floats,
#: nested and empty lists, strings around the sizes that cross reads.
SAMPLES = [
    [b"message", 1, 7, b"replicate", 1, [b"tuple", [b"list", b"x" * 3000, b""]], [b"dictionary"]],
    [b"answer", 3, b"\x00\x01\x00"],
    [0, 1, 127, 128, 2**31 - 1, 2**31, 2**62, -1, -(2**31), -(2**31) - 1, -(2**62)],
    [1.5, -0.0, 1e300, float("inf")],
    [[], [[]], [[], [b"a", []]], b"", b"\x80\x81\x82" * 50],
    b"bare string",
    12345678901234567890,
    [b"tuple", b"None", b"not a vocabulary word"],
]


class SameAsTwisted(SynchronousTestCase):
    def assert_same(self, data: bytes, cuts=(), depth: int = guard.MAX_DEPTH, dialect: bytes = b"pb"):
        stock = feed(banana.Banana, data, cuts, depth, dialect)
        fast = feed(_Fast, data, cuts, depth, dialect)
        # repr: NaN is not equal to itself, and -0.0 must stay -0.0.
        self.assertEqual(repr(fast), repr(stock), f"input {data[:80]!r}... cut at {sorted(cuts)[:10]}")
        return fast

    def test_samples_whole(self):
        """Each sample, and all of them in one chunk, give the same items as Twisted's parser."""
        for obj in SAMPLES:
            got, error = self.assert_same(encode(obj))
            self.assertIsNone(error)
            self.assertEqual(len(got), 1)
        got, error = self.assert_same(b"".join(encode(obj) for obj in SAMPLES))
        self.assertEqual(len(got), len(SAMPLES))

    def test_split_at_every_byte(self):
        """One message cut into two at every position, and delivered a byte at a time, parses the same."""
        data = b"".join(encode(obj) for obj in SAMPLES[1:])
        for cut in range(1, len(data)):
            got, error = self.assert_same(data, [cut])
            self.assertIsNone(error)
        got, error = self.assert_same(data, range(1, len(data)))
        self.assertEqual(len(got), len(SAMPLES) - 1)

    def test_large_string_in_reads(self):
        """A string near the size limit arriving in 64 KiB reads is one item, sliced whole."""
        payload = bytes(range(256)) * (banana.SIZE_LIMIT // 256)
        data = encode([b"message", 1, [b"list", payload, payload[:1000]]])
        got, error = feed(_Fast, data, range(0, len(data), 65536))
        self.assertIsNone(error)
        self.assertEqual(got, [[b"message", 1, [b"list", payload, payload[:1000]]]])

    def test_incomplete_waits(self):
        """A message cut short yields nothing and raises nothing, until the rest arrives."""
        data = encode(SAMPLES[0])
        sink = _sink(_Fast, guard.MAX_DEPTH)
        sink.dataReceived(data[:-1])
        self.assertEqual(sink.got, [])
        sink.dataReceived(data[-1:])
        self.assertEqual(sink.got, [SAMPLES[0]])

    def test_empty_chunk_is_no_data(self):
        """An empty read changes nothing."""
        data = encode(SAMPLES[1])
        sink = _sink(_Fast, guard.MAX_DEPTH)
        sink.dataReceived(data[:5])
        sink.dataReceived(b"")
        sink.dataReceived(data[5:])
        self.assertEqual(sink.got, [SAMPLES[1]])

    def test_prefix_limit(self):
        """A length prefix of 64 bytes is accepted, one of 65 refused, whole or byte by byte."""
        for kind in (banana.INT, banana.LONGINT, banana.NEG):
            ok = long_prefix(64, kind)
            for cuts in ((), range(1, len(ok))):
                got, error = self.assert_same(ok, cuts)
                self.assertIsNone(error)
            bad = long_prefix(65, kind)
            for cuts in ((), range(1, len(bad)), [30]):
                got, error = self.assert_same(bad, cuts)
                self.assertIs(error, banana.BananaError)
        got, error = self.assert_same(b"\x01" * 65)
        self.assertIs(error, banana.BananaError)
        got, error = self.assert_same(b"\x01" * 64)
        self.assertEqual((got, error), ([], None))

    def test_size_limits(self):
        """Strings and lists of 640 KiB are accepted (pending), one byte more refused before any data."""
        for make in (lambda n: _header(n, banana.STRING), lambda n: _header(n, banana.LIST)):
            got, error = self.assert_same(make(banana.SIZE_LIMIT))
            self.assertEqual((got, error), ([], None))
            got, error = self.assert_same(make(banana.SIZE_LIMIT + 1))
            self.assertIs(error, banana.BananaError)

    def test_nesting_guard(self):
        """Lists nested to the guard's depth parse; one deeper is refused, as with Twisted's parser."""
        for depth, refused in ((guard.MAX_DEPTH, False), (guard.MAX_DEPTH + 1, True)):
            data = list_of(1) * depth + integer(0)
            got, error = self.assert_same(data)
            self.assertIs(error, banana.BananaError if refused else None)

    def test_unknown_type_and_vocabulary(self):
        """An unknown type byte, an unknown vocabulary number, and vocabulary outside the pb dialect are refused."""
        for data in (b"\x01\x88", b"\x01\xff", b"\x7f\x87", b"\x00\x87"):
            got, error = self.assert_same(data)
            self.assertIsNotNone(error)
        got, error = self.assert_same(b"\x1a\x87", dialect=b"none")
        self.assertIs(error, banana.BananaError)
        got, error = self.assert_same(b"\x1a\x87")
        self.assertEqual((got, error), ([b"message"], None))

    def test_random_garbage(self):
        """Random bytes, and valid messages with random bytes changed, cut at random: the same items or the same refusal."""
        rng = random.Random(14)
        valid = [encode(obj) for obj in SAMPLES[1:]]
        for _ in range(3000):
            if rng.random() < 0.5:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
            else:
                data = bytearray(rng.choice(valid))
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            cuts = [rng.randrange(1, len(data) + 1) for _ in range(rng.randrange(4))]
            self.assert_same(data, cuts, depth=rng.choice((3, guard.MAX_DEPTH)))


def _header(n: int, kind: bytes) -> bytes:
    out = []
    banana.int2b128(n, out.append)
    return b"".join(out) + kind


def _brokers():
    """
    A stock PB client broker and a L{ClientBroker}, each connected to a
    StringTransport and speaking the pb dialect.
    """
    out = []
    for cls in (pb.Broker, ClientBroker):
        broker = cls(isClient=1)
        broker.makeConnection(StringTransport())
        broker.currentDialect = b"pb"
        broker.transport.clear()
        out.append(broker)
    return out


def _send(broker, *call):
    try:
        d = broker._sendMessage(*call)
    except Exception as e:
        return broker.transport.value(), type(e), sorted(broker.waitingForAnswers or {})
    if d is not None and d.called:
        failure = []
        d.addErrback(failure.append)
        return broker.transport.value(), failure[0].type, sorted(broker.waitingForAnswers or {})
    return broker.transport.value(), None, sorted(broker.waitingForAnswers or {})


class ThinCallTests(SynchronousTestCase):
    def assert_same_call(self, *call, request=0):
        stock, thin = _brokers()
        stock.currentRequestID = thin.currentRequestID = request
        expected = _send(stock, *call)
        self.assertEqual(_send(thin, *call), expected)
        return expected

    def test_same_bytes_as_call_remote(self):
        """A call with a list of byte strings writes exactly the bytes PB's jelly and Banana would."""
        chunk_lists = ([b"\x01payload"], [], [b""], [b"list", b"None", b"x" * 1000], [b"a"] * 3, [b"y" * banana.SIZE_LIMIT])
        for chunks in chunk_lists:
            for object_id in (1, 2**31 - 1, 2**31, 2**40):
                for request in (0, 2**31 - 2):
                    for prefix, name in ((b"", b"replicate"), (b"", b"login"), (b"cache", b"take")):
                        data, error, waiting = self.assert_same_call(prefix, None, object_id, name, (chunks,), {}, request=request)
                        self.assertIsNone(error)
                        self.assertEqual(waiting, [request + 1])

    def test_other_calls_take_pbs_path(self):
        """Keyword arguments, other arguments, oversized chunks and a lost connection behave as with PB's path."""
        for args, kw in (
            (([b"a"],), {"x": 1}),
            (([b"a"], 1), {}),
            (([b"a", "text"],), {}),
            ((b"bytes",), {}),
            ((), {}),
            (([b"z" * (banana.SIZE_LIMIT + 1)],), {}),
        ):
            self.assert_same_call(b"", None, 1, b"replicate", args, kw)
        stock, thin = _brokers()
        for broker in (stock, thin):
            broker.connectionLost(failure.Failure(error.ConnectionDone()))
        self.assertEqual(_send(thin, b"", None, 1, b"replicate", ([b"a"],), {}), _send(stock, b"", None, 1, b"replicate", ([b"a"],), {}))

    def test_answers(self):
        """A byte-string answer fires the call's Deferred with it; any other answer is unjellied as by PB."""
        for answer in (b"\x00\x01\x02", b"", [b"tuple", 1, 2], [b"list", b"a"], 7):
            results = []
            for broker in _brokers():
                d = broker._sendMessage(b"", None, 1, b"replicate", ([b"a"],), {})
                broker.dataReceived(encode([b"answer", 1, answer]))
                results.append(self.successResultOf(d))
                self.assertEqual(broker.waitingForAnswers, {})
            self.assertEqual(results[1], results[0])
            self.assertEqual(type(results[1]), type(results[0]))


class _Plain(PlainCalls, pb.Broker):
    pass


class PlainCallsTests(SynchronousTestCase):
    def outcome(self, f, *args):
        try:
            value = f(*args)
        except Exception as e:
            return "raised", type(e)
        return repr(value), type(value)

    def test_unserialize_as_jelly_does(self):
        """Chunked arguments skip unjelly with the same values; everything else is unjelly's, refusals included."""
        stock, plain = pb.Broker(isClient=0), _Plain(isClient=0)
        for sexp in (
            [b"tuple", [b"list", b"a", b"", b"x" * 2000]],
            [b"tuple", [b"list"]],
            [b"dictionary"],
            [b"tuple", [b"list", b"a", 1]],
            [b"tuple", [b"list", [b"list", b"a"]]],
            [b"tuple", [b"list", b"a"], 1],
            [b"tuple", b"a"],
            [b"tuple"],
            [b"tuple", [b"reference", 1, [b"list", b"a"]]],
            [b"dictionary", [b"a", b"b"]],
            [b"dictionary", b"x"],
            [b"list", b"a"],
            [b"os.system", b"true"],
            [b"instance", b"os.system"],
            [],
            b"bytes",
            7,
        ):
            self.assertEqual(self.outcome(plain.unserialize, sexp), self.outcome(stock.unserialize, sexp), sexp)

    def test_serialize_as_jelly_does(self):
        """A byte-string answer is sent as itself, as jelly would; anything else is jelly's."""
        stock, plain = pb.Broker(isClient=0), _Plain(isClient=0)
        for value in (b"\x00\x01", b"", [b"a"], (1, 2), "text", None, 3):
            self.assertEqual(self.outcome(plain.serialize, value), self.outcome(stock.serialize, value), value)

    def test_other_security_is_jellys(self):
        """A broker with other security options (a bare one refuses tuples) takes jelly's path, refusal and all."""
        security = jelly.SecurityOptions()
        plain = _Plain(isClient=0, security=security)
        self.assertEqual(
            self.outcome(plain.unserialize, [b"tuple", [b"list", b"a"]]), self.outcome(pb.Broker(isClient=0, security=security).unserialize, [b"tuple", [b"list", b"a"]])
        )
