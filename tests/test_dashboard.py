"""
The dashboard's files (L{admin.dashboard}) through the API's whole resource
stack with C{StubTreq}: behind the accounts, naming the account in the page,
with headers that keep the page to itself.  The page in a browser:
L{tests.test_dashboard_browser}.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.trial.unittest import SynchronousTestCase

from admin.auth import Account
from admin.dashboard import ASSETS, POLICY, UnknownAsset, asset
from tests.support.v1_api import ACCOUNTS, header, make_v1

ADMIN = ("admin", "admin-secret")
VIEWER = ("viewer", "viewer-secret")


class AssetTests(SynchronousTestCase):
    """L{asset} reads the package's files."""

    def test_everyAssetIsPackageData(self) -> None:
        """Each file L{ASSETS} names is in the package, and the package has no other."""
        shipped = {entry.name for entry in files("admin").joinpath("ui").iterdir() if entry.is_file()}
        self.assertEqual(shipped, set(ASSETS))

    def test_pageNamesTheAccount(self) -> None:
        """The page carries the account that loads it, once."""
        for account in Account:
            _, page = asset("index.html", account)
            self.assertEqual(page.count(b"data-account="), 1)
            self.assertIn(f'data-account="{account.value}"'.encode(), page)

    def test_unknownNameRefused(self) -> None:
        """Only the listed files are served: no path into the package."""
        for name in ("../app.py", "__init__.py", "", "index.htm"):
            self.assertRaises(UnknownAsset, asset, name, Account.ADMIN)


class RouteTests(SynchronousTestCase):
    """C{/ui} in the API's resource stack."""

    def setUp(self) -> None:
        self.v1 = make_v1(self, api=ACCOUNTS)

    def test_needsAnAccount(self) -> None:
        """Without credentials: 401 with a Basic challenge, as the API."""
        for path in ("/ui", "/ui/", "/ui/dashboard.js"):
            response, _ = self.v1.call(self, "GET", path)
            self.assertEqual(response.code, 401, path)
            self.assertIn("Basic", header(response, "WWW-Authenticate") or "")

    def test_uiMovesToTheFolder(self) -> None:
        """C{/ui} sends the browser to C{/ui/}, where the page's relative links work."""
        response, _ = self.v1.call(self, "GET", "/ui", auth=VIEWER, allow_redirects=False)
        self.assertEqual((response.code, header(response, "Location")), (301, "ui/"))

    def test_pageForEachAccount(self) -> None:
        """The page says which account loaded it: the script shows buttons to an admin only."""
        for credentials, account in ((ADMIN, "admin"), (VIEWER, "basic")):
            response, body = self.v1.call(self, "GET", "/ui/", auth=credentials)
            self.assertEqual(response.code, 200)
            self.assertEqual(header(response, "Content-Type"), "text/html; charset=utf-8")
            self.assertIn(f'data-account="{account}"'.encode(), body)

    def test_assetsWithTheirTypesAndGuards(self) -> None:
        """Script and style have their media types; every answer forbids framing, sniffing and other origins."""
        for name, content_type in ASSETS.items():
            response, body = self.v1.call(self, "GET", f"/ui/{name}", auth=VIEWER)
            self.assertEqual((response.code, header(response, "Content-Type")), (200, content_type.decode()))
            self.assertEqual(header(response, "Content-Security-Policy"), POLICY.decode())
            self.assertEqual(header(response, "X-Frame-Options"), "DENY")
            self.assertEqual(header(response, "X-Content-Type-Options"), "nosniff")
            self.assertTrue(body)

    def test_unknownFile(self) -> None:
        """A name that is not a dashboard file: 404 naming it."""
        response, body = self.v1.call(self, "GET", "/ui/app.py", auth=VIEWER)
        self.assertEqual(response.code, 404)
        self.assertIn(b'no dashboard file named \\"app.py\\"', body)

    def test_basicAccountCannotChangeAServer(self) -> None:
        """What the buttons send, from a basic account: refused (the page hides them too)."""
        response, _ = self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=maintenance", auth=VIEWER)
        self.assertEqual(response.code, 403)
        response, _ = self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=maintenance", auth=ADMIN)
        self.assertEqual(response.code, 204)
