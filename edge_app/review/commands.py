"""`edge-app serve`, `edge-app users` and `edge-app report`: the review side's commands.

Flask and fpdf2 are imported only when these commands run, so `edge-app run` starts as fast as
before.
"""

from __future__ import annotations

import errno
import getpass
import sys
from pathlib import Path

import click

from leukedge.edge_app.clitools import db_option
from leukedge.edge_app.settings import DISCLAIMER


def _open_checked(db_path: Path, read_only: bool):
    """Open (and upgrade, unless read-only) the database once, or exit with a one-line error."""
    from leukedge.edge_app.storage import StorageError, connect

    try:
        connection = connect(db_path, read_only=read_only)
    except StorageError as error:
        raise click.ClickException(str(error)) from None
    return connection


@click.command(epilog=DISCLAIMER)
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback needs reviewer accounts (edge-app users add).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8080,
    show_default=True,
    help="TCP port of the review page.",
)
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The --save-dir of edge-app run: field images are shown only from under this folder.",
)
@click.option("--read-only", is_flag=True, help="Show results and history; accept no review.")
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Reviewer accounts file. Default: review-users.json beside the database.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS with this certificate (PEM); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The certificate's private key (PEM).",
)
def serve(
    db_path: Path,
    host: str,
    port: int,
    save_dir: Path | None,
    read_only: bool,
    users_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Serve the review page: samples, fields, confirm/override with a reason, reports.

    \b
    Examples:
      edge-app serve --db results.sqlite --save-dir frames
      edge-app serve --db results.sqlite --read-only
      edge-app users add alice --db results.sqlite && \\
        edge-app serve --db results.sqlite --save-dir frames --host 0.0.0.0
    """
    from werkzeug.serving import WSGIRequestHandler, make_server

    class RequestLog(WSGIRequestHandler):
        """werkzeug colours every request line on POSIX; a log file (systemd, `2> serve.log`)
        gets them plain."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if sys.stderr.isatty():
                return super().log_request(code, size)
            self.log("info", '"%s" %s %s', self.requestline, code, size)

    from leukedge.edge_app.review.auth import UsersError, default_users_file, load_users
    from leukedge.edge_app.review.server import ServerConfig, create_app, is_loopback

    where = f"--users {users_file}" if users_file is not None else f"--db {db_path}"
    users_file = users_file or default_users_file(db_path)
    try:
        users = load_users(users_file)
    except UsersError as error:
        raise click.ClickException(str(error)) from None
    if not is_loopback(host) and not users:
        raise click.ClickException(
            f"--host {host}: refusing to serve beyond this machine without reviewer accounts: "
            f"add one with `edge-app users add NAME {where}` (or keep --host 127.0.0.1)"
        )
    if save_dir is not None and not save_dir.is_dir():
        raise click.ClickException(f"--save-dir {save_dir}: no such folder")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert is not None:
        _check_tls(tls_cert, tls_key)
    _open_checked(db_path, read_only).close()  # upgrades an older database once, before serving
    app = create_app(
        ServerConfig(
            db_path, save_dir, read_only, users, users_file, secure_cookie=tls_cert is not None
        )
    )
    try:
        _probe(host, port)  # werkzeug would print its own text and exit; say it our way first
        server = make_server(
            host,
            port,
            app,
            threaded=True,
            request_handler=RequestLog,
            ssl_context=(str(tls_cert), str(tls_key)) if tls_cert else None,
        )
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"--port {port}: already in use on {host}: stop the other "
                "server or pass another --port"
            ) from None
        raise click.ClickException(
            f"--host {host} --port {port}: cannot listen ({error})"
        ) from None
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host) and tls_cert is None:
        click.echo(
            "edge-app: warning: plain HTTP beyond this machine: passwords and results cross "
            "the network unencrypted; pass --tls-cert/--tls-key or use an SSH tunnel",
            err=True,
        )
    click.echo(
        f"edge-app: review page on http{'s' if tls_cert else ''}://{shown}:{server.server_port}/ "
        f"({'read-only, ' if read_only else ''}{'login required' if users else 'no login: this machine only'}); "
        "Ctrl+C to stop",
        err=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair as the server will, so a wrong file is named, not blamed on the port."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise click.ClickException(
            f"--tls-cert {cert} / --tls-key {key}: not a usable PEM certificate and its private "
            f"key ({error.reason if isinstance(error, ssl.SSLError) else error.strerror or error}); "
            "give the certificate and the key that belongs to it"
        ) from None


def _probe(host: str, port: int) -> None:
    """Bind (as the server will, with SO_REUSEADDR) and release: OSError if it cannot listen."""
    import socket

    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


@click.group()
def users() -> None:
    """Reviewer accounts of the review page (passwords hashed with scrypt, file owner-only).

    \b
    Examples:
      edge-app users add alice --db results.sqlite
      edge-app users list --db results.sqlite
      edge-app users remove alice --db results.sqlite
    """


def accounts_file_options(function):
    """`--db` / `--users`: where the `users` subcommands find the accounts file."""
    function = click.option(
        "--users",
        "users_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The accounts file (default: review-users.json beside --db).",
    )(function)
    return click.option(
        "--db",
        "db_path",
        type=click.Path(path_type=Path),
        default=None,
        help="The accounts file is review-users.json beside this database.",
    )(function)


def _accounts_file(db_path: Path | None, users_file: Path | None) -> Path:
    from leukedge.edge_app.review.auth import default_users_file

    if users_file is None and db_path is None:
        raise click.UsageError("pass --db DATABASE (accounts beside it) or --users FILE")
    return users_file or default_users_file(db_path)


@users.command("add")
@click.argument("name")
@accounts_file_options
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
def users_add(
    name: str, db_path: Path | None, users_file: Path | None, password_stdin: bool
) -> None:
    """Add (or reset) a reviewer account; the password is asked for, never an argument.

    \b
    Examples:
      edge-app users add alice --db results.sqlite
      printf '%s\\n' "$PASSWORD" | edge-app users add alice --db results.sqlite --password-stdin
    """
    from leukedge.edge_app.review.auth import UsersError, add_user

    users_file = _accounts_file(db_path, users_file)
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise click.ClickException("the passwords differ: nothing changed")
    try:
        replaced = add_user(users_file, name, password)
    except (UsersError, OSError) as error:
        raise click.ClickException(
            f"{users_file}: {error}" if isinstance(error, OSError) else str(error)
        ) from None
    click.echo(
        f"edge-app: {'reset' if replaced else 'added'} reviewer {name} in {users_file} (owner-only)",
        err=True,
    )


@users.command("list")
@accounts_file_options
def users_list(db_path: Path | None, users_file: Path | None) -> None:
    """Print the reviewer accounts, one name a line (no password hashes).

    \b
    Examples:
      edge-app users list --db results.sqlite
    """
    from leukedge.edge_app.review.auth import UsersError, load_users

    users_file = _accounts_file(db_path, users_file)
    try:
        names = sorted(load_users(users_file))
    except UsersError as error:
        raise click.ClickException(str(error)) from None
    for name in names:
        click.echo(name)
    click.echo(f"edge-app: {len(names)} reviewer account(s) in {users_file}", err=True)


@users.command("remove")
@click.argument("name")
@accounts_file_options
def users_remove(name: str, db_path: Path | None, users_file: Path | None) -> None:
    """Remove a reviewer account. A running review page logs the reviewer out on their next
    request; reviews they recorded stay in the database under their name.

    \b
    Examples:
      edge-app users remove alice --db results.sqlite
    """
    from leukedge.edge_app.review.auth import UsersError, remove_user

    users_file = _accounts_file(db_path, users_file)
    try:
        remove_user(users_file, name)
    except (UsersError, OSError) as error:
        raise click.ClickException(
            f"{users_file}: {error.strerror or error}" if isinstance(error, OSError) else str(error)
        ) from None
    click.echo(f"edge-app: removed reviewer {name} from {users_file}", err=True)


@click.command(epilog=DISCLAIMER)
@click.argument("sample_id")
@db_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="The report file: .pdf or .html (written atomically, owner-only).",
)
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Read thumbnails only from under this folder (default: the paths recorded).",
)
def report(sample_id: str, db_path: Path, out: Path, save_dir: Path | None) -> None:
    """Write a sample's printable report (PDF or HTML).

    \b
    Examples:
      edge-app report S-0042 --db results.sqlite --out S-0042.pdf
      edge-app report S-0042 --db results.sqlite --out S-0042.html
    """
    from leukedge.edge_app.review.report import ReportError, build_report, write_report

    if out.suffix.lower() not in (".pdf", ".html", ".htm"):
        raise click.BadParameter(f"{out}: give a .pdf or .html file name", param_hint="--out")
    connection = (
        _open_checked(db_path, read_only=True)
        if _is_current(db_path)
        else _open_checked(db_path, False)
    )
    try:
        built = build_report(connection, sample_id, save_dir, confined=save_dir is not None)
        kind = write_report(built, out)
    except ReportError as error:
        raise click.ClickException(str(error)) from None
    finally:
        connection.close()
    click.echo(f"edge-app: {kind.upper()} report of sample {sample_id} written to {out}", err=True)


def _is_current(db_path: Path) -> bool:
    """True when the database needs no upgrade (so the report opens it without writing)."""
    import sqlite3

    from leukedge.edge_app.storage import SCHEMA_VERSION, StorageError, check_database_file

    try:
        check_database_file(db_path)
        connection = sqlite3.connect(db_path)
        try:
            return int(connection.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION
        finally:
            connection.close()
    except (StorageError, sqlite3.Error):
        return False  # _open_checked then says what is wrong


def register(group: click.Group) -> None:
    group.add_command(serve, "serve")
    group.add_command(users, "users")
    group.add_command(report, "report")
