"""The review web page (`edge-app serve`): samples, their fields, append-only reviews, reports.

Flask app over the results database. Safe defaults: served on 127.0.0.1; any other address only
with reviewer accounts (every page then needs a login); HttpOnly SameSite=Strict session cookie;
a CSRF token on every POST; failed logins rate-limited; images served only for frames whose
recorded path lies under --save-dir, looked up by frame id (never a path from the URL). One
database connection per request (WAL + busy timeout), so `edge-app run` keeps writing beside it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from flask import (
    Flask,
    Response,
    abort,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from leukedge.edge_app.review import data
from leukedge.edge_app.review.auth import Accounts, LoginLimiter, account_tag, verify
from leukedge.edge_app.review.report import (
    ReportError,
    build_report,
    render_html,
    render_pdf,
    samples_csv,
    thumbnail,
)
from leukedge.edge_app.settings import DISCLAIMER
from leukedge.edge_app.storage import StorageError, connect, utc_now

PER_PAGE = 50
API_LIMIT_MAX = 10000
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; form-action 'self'; frame-ancestors 'none'"
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class ServerConfig:
    db_path: Path
    save_dir: Path | None = None
    read_only: bool = False
    users: dict[str, str] = field(default_factory=dict)  # name -> password hash; empty: no login
    users_file: Path | None = None  # read again when it changes (accounts removed while serving)
    secure_cookie: bool = False  # HTTPS: the session cookie is sent over TLS only
    login_attempts: int = 5
    login_window_s: float = 300.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(config: ServerConfig) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="leukedge_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookie,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.json.sort_keys = False
    app.jinja_env.filters["fromjson"] = json.loads
    limiter = LoginLimiter(config.login_attempts, config.login_window_s)
    accounts = Accounts(config.users, config.users_file)
    save_dir = config.save_dir.resolve() if config.save_dir is not None else None
    results = data.ResultCache()

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = connect(config.db_path, read_only=config.read_only, upgrade=False)
        return g.db

    @app.teardown_appcontext
    def close_db(_error) -> None:
        connection = g.pop("db", None)
        if connection is not None:
            connection.close()

    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]

    @app.context_processor
    def common() -> dict:
        return {
            "csrf_token": csrf_token(),
            "user": session.get("user"),
            "read_only": config.read_only,
            "disclaimer": DISCLAIMER,
            "images": save_dir is not None,
        }

    def is_api() -> bool:
        return request.path.startswith("/api/")

    @app.before_request
    def guard():
        if request.endpoint == "static":
            return None
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
            if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
                abort(403, "missing or wrong CSRF token: reload the page and try again")
        if (
            accounts.login_required
            and not accounts.session_valid(session.get("user"), session.get("account"))
            and request.endpoint != "login"
        ):
            if "user" in session:  # an account removed or reset while serving: logged out
                session.clear()  # (an anonymous session keeps the login form's CSRF token)
            if is_api():
                abort(401, "log in first")
            return redirect(
                url_for("login", next=request.full_path if request.args else request.path)
            )
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        text = error.description or error.name
        if is_api():
            return jsonify({"error": text, "status": error.code}), error.code
        return render_template(
            "error.html", code=error.code, title=error.name, text=text
        ), error.code

    @app.errorhandler(StorageError)
    def storage_error(error: StorageError):
        if is_api():
            return jsonify({"error": str(error), "status": 503}), 503
        return render_template(
            "error.html", code=503, title="Database unavailable", text=str(error)
        ), 503

    # -- pages ---------------------------------------------------------------------------------
    @app.get("/")
    def sample_list():
        page = max(1, request.args.get("page", 1, type=int) or 1)
        to_review = request.args.get("show") == "to-review"
        search = request.args.get("q", "").strip()[:100] or None
        counts = {"all": data.count_samples(db()), "to_review": data.count_samples(db(), True)}
        total = (
            counts["to_review" if to_review else "all"]
            if search is None
            else data.count_samples(db(), to_review, search)
        )
        pages = max(1, -(-total // PER_PAGE))
        samples = data.list_samples(
            db(),
            PER_PAGE,
            (page - 1) * PER_PAGE,
            cache=results,
            to_review=to_review,
            search=search,
        )
        return render_template(
            "list.html",
            samples=samples,
            total=total,
            counts=counts,
            search=search,
            show="to-review" if to_review else None,
            page=page,
            pages=pages,
            per_page=PER_PAGE,
        )

    def load(sample_id: str):
        found = data.get_sample(db(), sample_id)
        if found is None:
            abort(404, f"There is no sample {sample_id!r} in this database.")
        return found

    @app.get("/samples/<path:sample_id>")
    def sample_page(sample_id: str):
        summary, frames = load(sample_id)
        message = "Review saved." if request.args.get("saved") else None
        return render_template(
            "sample.html",
            s=summary,
            frames=frames,
            labels=data.model_labels(db()),
            message=message,
            error=None,
            next_id=data.next_to_review(db(), sample_id),
        )

    @app.post("/review/<path:sample_id>")
    def review(sample_id: str):
        if config.read_only:
            abort(403, "this server is read-only (--read-only): reviews cannot be saved here")
        summary, frames = load(sample_id)
        reviewer = session.get("user") or request.form.get("reviewer", "")
        labels = data.model_labels(db())
        try:
            data.add_review(
                db(),
                sample_id,
                reviewer,
                request.form.get("action", ""),
                request.form.get("reason", ""),
                request.form.get("override_label") or None,
                labels,
            )
        except data.ReviewError as error:
            return render_template(
                "sample.html",
                s=summary,
                frames=frames,
                labels=labels,
                message=None,
                error=f"Not saved: {error}.",
            ), 400
        return redirect(url_for("sample_page", sample_id=sample_id, saved=1), code=303)

    @app.get("/frames/<int:frame_id>/image")
    def frame_image(frame_id: int):
        return send_file(image_of(frame_id), max_age=0)

    @app.get("/frames/<int:frame_id>/thumb")
    def frame_thumbnail(frame_id: int):
        path = image_of(frame_id)
        small = _thumbnail(str(path), path.stat().st_mtime_ns)
        if small is None:
            abort(404, "this field's image cannot be read")
        return Response(small, mimetype="image/jpeg")

    def image_of(frame_id: int) -> Path:
        # The path comes from the database, never from the URL, and must lie under --save-dir.
        path = data.field_image(data.frame_image_path(db(), frame_id), save_dir)
        if path is None:
            abort(404, "no saved image for this field under the save folder")
        return path

    @app.get("/report/<fmt>/<path:sample_id>")
    def report_file(sample_id: str, fmt: str):
        if fmt not in ("pdf", "html"):
            abort(404, "reports are .pdf or .html")
        try:
            report = build_report(db(), sample_id, save_dir, confined=True)
        except ReportError as error:
            abort(404, str(error))
        name = (
            f"leukedge-report-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in sample_id)}"
        )
        if fmt == "pdf":
            return Response(
                render_pdf(report),
                mimetype="application/pdf",
                headers={"Content-Disposition": f'inline; filename="{name}.pdf"'},
            )
        return Response(
            render_html(report),
            mimetype="text/html",
            headers={"Content-Security-Policy": REPORT_CSP},
        )

    @app.get("/export/samples.csv")
    def samples_export():
        # The same file as `edge-app export --samples-csv`, for a reviewer without a shell.
        stamp = utc_now()[:10]
        return Response(
            samples_csv(db()),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="leukedge-samples-{stamp}.csv"'},
        )

    @app.route("/login", methods=["GET", "POST"])
    def login():
        target = request.values.get("next") or url_for("sample_list")
        if not target.startswith("/") or target.startswith("//"):
            target = url_for("sample_list")
        if not accounts.login_required:
            return redirect(url_for("sample_list"))
        if request.method == "GET":
            return render_template("login.html", error=None, next=target)
        client = request.remote_addr or "?"
        wait = limiter.blocked_for(client)
        if wait > 0:
            abort(429, f"too many failed logins: try again in {wait:.0f} s")
        name, password = request.form.get("name", ""), request.form.get("password", "")
        users = accounts.current()  # one reading for the check and the session's tag
        if not verify(users, name, password):
            limiter.failed(client)
            return render_template("login.html", error="Wrong name or password.", next=target), 401
        limiter.succeeded(client)
        session.clear()  # a fresh session (and CSRF token) after login
        session["user"] = name
        session["account"] = account_tag(users[name])
        return redirect(target, code=303)

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login" if accounts.login_required else "sample_list"), code=303)

    # -- JSON API ------------------------------------------------------------------------------
    def paging() -> tuple[int | None, int]:
        limit = request.args.get("limit", type=int)
        offset = max(0, request.args.get("offset", 0, type=int) or 0)
        if limit is not None:
            limit = max(1, min(limit, API_LIMIT_MAX))
        return limit, offset

    @app.get("/api/samples")
    def api_samples():
        limit, offset = paging()
        return jsonify([s.as_dict() for s in data.list_samples(db(), limit, offset, cache=results)])

    @app.get("/api/samples/<path:sample_id>")
    def api_sample(sample_id: str):
        summary, _frames = load(sample_id)
        return jsonify({**summary.as_dict(), "reviews": summary.reviews})

    @app.get("/api/frames")
    def api_frames():
        limit, offset = paging()
        sample_id = request.args.get("sample_id")
        if sample_id is not None and data.get_sample(db(), sample_id) is None:
            abort(404, f"no sample {sample_id!r}")
        return jsonify(data.frames_page(db(), sample_id, limit or 1000, offset))

    @app.get("/api/results")
    def api_results():
        limit, offset = paging()
        return jsonify(
            [
                {
                    "sample_id": s.sample_id,
                    "n_frames": s.result.n_frames,
                    "decision": s.result.decision,
                    "label": s.result.label,
                    "confidence": s.result.confidence,
                    "reason": s.result.reason,
                    "status": s.status,
                    "final": s.final,
                }
                for s in data.list_samples(db(), limit, offset, cache=results)
            ]
        )

    @app.get("/api/reviews")
    def api_reviews():
        sample_id = request.args.get("sample_id")
        if sample_id is not None and data.get_sample(db(), sample_id) is None:
            abort(404, f"no sample {sample_id!r}")
        return jsonify(data.sample_reviews(db(), sample_id))

    return app


@functools.lru_cache(maxsize=512)
def _thumbnail(path: str, _mtime_ns: int) -> bytes | None:
    return thumbnail(Path(path))
