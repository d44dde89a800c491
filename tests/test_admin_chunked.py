"""
L{ChunkedFraming}: the framing of a chunked body, by the rules of Twisted's
decoder: what it takes, in any pieces, where the body ends, and what it refuses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from admin.chunked import MAX_SIZE_LINE, MAX_TRAILERS, ChunkedFraming, MalformedChunks

BODY = b"2;name=\"v\xe9\"\r\nab\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"


class ChunkedFramingTests(SynchronousTestCase):
    """Each body fed whole and byte by byte."""

    def fed(self, *pieces: bytes) -> ChunkedFraming:
        framing = ChunkedFraming()
        for piece in pieces:
            framing.feed(piece)
        return framing

    def test_wholeBodyFinishes(self) -> None:
        self.assertTrue(self.fed(BODY).finished)

    def test_byteByByte(self) -> None:
        framing = self.fed(*(BODY[i:i + 1] for i in range(len(BODY) - 1)))
        self.assertFalse(framing.finished)
        framing.feed(BODY[-1:])
        self.assertTrue(framing.finished)

    def test_whatFollowsTheBodyIsNotLookedAt(self) -> None:
        self.assertTrue(self.fed(b"0\r\n\r\nnot a chunk at all", b"\x00").finished)

    def test_sizeLineAtTheLimit(self) -> None:
        self.assertTrue(self.fed(b"0;" + b"e" * (MAX_SIZE_LINE - 3) + b"\r\n\r\n").finished)
        self.assertRaises(MalformedChunks, self.fed, b"0;" + b"e" * (MAX_SIZE_LINE - 2) + b"\r\n\r\n")

    def test_trailersAtTheLimit(self) -> None:
        line = b"X: " + b"t" * 1019 + b"\r\n"
        self.assertTrue(self.fed(b"0\r\n" + line * (MAX_TRAILERS // len(line)) + b"\r\n").finished)
        self.assertRaises(MalformedChunks, self.fed, b"0\r\n" + line * (MAX_TRAILERS // len(line) + 1))

    def test_refused(self) -> None:
        for body in (b"-5\r\n", b"+5\r\n", b"0x5\r\n", b" 5\r\n", b"\r\n", b"g\r\n", b"5;\x7f\r\n",
                     b"2\r\nabc\r\n", b"2\r\nab\n0\r\n\r\n"):
            with self.subTest(body=body):
                self.assertRaises(MalformedChunks, self.fed, body)
