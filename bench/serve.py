"""`usersctl serve` under load, next to the tutorial's own app, in the same run.

    python bench/serve.py                 # 1000 users, 10 s per figure, 3 rounds
    python bench/serve.py --users 1000 --seconds 10 --connections 16 --rounds 3

Needs `wrk` (Debian: apt-get install wrk) and the server extra. Both apps run under the
same uvicorn (one worker each, measured in turn, round after round) on SQLite databases of
the same size: the tutorial's `users.db` (its code verbatim from the seed tutorial, in a temporary
package) and a usersctl database holding the same users. usersctl's requests carry an
admin API token (the tutorial's need none). POST /auth/token (which the tutorial lacks) is
compared with the argon2 bound: cores / the CPU time of one verification (see
argon2_bound).
Targets (issue 14): GET >= 1.0x the tutorial app; login >= 0.8x the argon2 bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import find_usersctl, interpreter_for, run_quiet

PASSWORD = "an orrery of brass, oiled"
TUTORIAL = {
    "__init__.py": "",
    "database.py": """from sqlalchemy import create_engine
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import sessionmaker

SQLALCHEMY_DATABASE_URL = "sqlite:///./users.db"
engine = create_engine(
    SQLALCHEMY_DATABASE_URL, connect_args={"check_same_thread": False}
)
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)
Base = declarative_base()
""",
    "models.py": """from sqlalchemy import Column, Integer, String
from .database import Base

class User(Base):
    __tablename__ = "users"

    id = Column(Integer, primary_key=True, index=True)
    name = Column(String, nullable=False)
    email = Column(String, unique=True, index=True, nullable=False)
    password = Column(String, nullable=False)
""",
    "schemas.py": """from pydantic import BaseModel, EmailStr

class UserBase(BaseModel):
    name: str
    email: EmailStr

class UserCreate(UserBase):
    password: str

class UserResponse(UserBase):
    id: int

    class Config:
        orm_mode = True
""",
    "crud.py": """from sqlalchemy.orm import Session
from . import models, schemas

def get_users(db: Session):
    return db.query(models.User).all()

def get_user(db: Session, user_id: int):
    return db.query(models.User).filter(models.User.id == user_id).first()

def create_user(db: Session, user: schemas.UserCreate):
    db_user = models.User(name=user.name, email=user.email, password=user.password)
    db.add(db_user)
    db.commit()
    db.refresh(db_user)
    return db_user

def delete_user(db: Session, user_id: int):
    db_user = db.query(models.User).filter(models.User.id == user_id).first()
    if db_user:
        db.delete(db_user)
        db.commit()
    return db_user
""",
    "main.py": """from fastapi import FastAPI, Depends, HTTPException
from sqlalchemy.orm import Session
from . import models, schemas, crud
from .database import SessionLocal, engine

models.Base.metadata.create_all(bind=engine)

app = FastAPI(title="Users CRUD API")

def get_db():
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


@app.post("/users/", response_model=schemas.UserResponse)
def create_user(user: schemas.UserCreate, db: Session = Depends(get_db)):
    return crud.create_user(db=db, user=user)


@app.get("/users/", response_model=list[schemas.UserResponse])
def get_all_users(db: Session = Depends(get_db)):
    return crud.get_users(db)


@app.get("/users/{user_id}", response_model=schemas.UserResponse)
def get_user_by_id(user_id: int, db: Session = Depends(get_db)):
    user = crud.get_user(db, user_id)
    if not user:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.delete("/users/{user_id}", response_model=schemas.UserResponse)
def delete_user_by_id(user_id: int, db: Session = Depends(get_db)):
    user = crud.delete_user(db, user_id)
    if not user:
        raise HTTPException(status_code=404, detail="User not found")
    return user
""",
}
LOGIN_LUA = """wrk.method = "POST"
wrk.body = "username=bench0%40example.com&password={password}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server on port {port} exited {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server on port {port} did not start")


def wrk(
    url: str, seconds: int, connections: int, *, header: str = "", script: str = ""
) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "60s"]
    if header:
        argv += ["-H", header]
    if script:
        argv += ["-s", script]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"wrk failed on {url}: {done.stdout}{done.stderr}")
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures = {"rps": rate, "non2xx": float(non2xx.group(1)) if non2xx else 0.0}
    for label, key in (("50%", "p50"), ("99%", "p99")):
        match = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        value = float(match.group(1)) if match else float("nan")
        unit = match.group(2) if match else "ms"
        figures[key] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return figures


ARGON2_PROBE = """
import json, os, statistics, threading, time
from argon2 import PasswordHasher
hasher = PasswordHasher()
stored = hasher.hash("p" * 20)
walls, cpus = [], []
for _ in range(15):
    wall, cpu = time.perf_counter(), time.process_time()
    hasher.verify(stored, "p" * 20)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
cores = os.cpu_count() or 1
def verify_many():
    for _ in range(8):
        hasher.verify(stored, "p" * 20)
threads = [threading.Thread(target=verify_many) for _ in range(cores)]
started = time.perf_counter()
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
rate = 8 * cores / (time.perf_counter() - started)
print(json.dumps({"wall": statistics.median(walls), "cpu": statistics.median(cpus),
                  "rate": rate, "lanes": hasher.parallelism}))
"""


def argon2_bound(python: str) -> dict[str, float]:
    """One verification's wall and CPU time, and the rate of one verifying thread per core.
    argon2-cffi's default p=4 runs a verification's lanes on threads of their own, so one
    verification keeps more than one core busy (its CPU time exceeds its wall time): the
    bound is cores / the CPU time of one verification; cores / its wall time would ask for
    more than argon2 alone does with every core verifying."""
    probe = subprocess.run([python, "-c", ARGON2_PROBE], capture_output=True, text=True,
                           check=True)  # fmt: skip
    figures: dict[str, float] = json.loads(probe.stdout)
    figures["bound"] = (os.cpu_count() or 1) / figures["cpu"]
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    usersctl = find_usersctl()
    python = interpreter_for(usersctl)
    work = Path(tempfile.mkdtemp(prefix="usersctl-bench-serve-"))
    try:
        return run(args, usersctl, python, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, usersctl: Path, python: str, work: Path) -> int:
    # The tutorial's app and its users.db (plaintext passwords, as it stores them).
    package = work / "fastapi_app"
    package.mkdir()
    for name, text in TUTORIAL.items():
        (package / name).write_text(text)
    tutorial_db = sqlite3.connect(work / "users.db")
    tutorial_db.execute(
        "CREATE TABLE users (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR NOT NULL, "
        "email VARCHAR NOT NULL, password VARCHAR NOT NULL)"
    )
    tutorial_db.execute("CREATE INDEX ix_users_id ON users (id)")
    tutorial_db.execute("CREATE UNIQUE INDEX ix_users_email ON users (email)")
    tutorial_db.executemany(
        "INSERT INTO users (name, email, password) VALUES (?, ?, ?)",
        [(f"User {n}", f"bench{n}@example.com", PASSWORD) for n in range(args.users)],
    )
    tutorial_db.commit()
    tutorial_db.close()

    # usersctl's database with the same users (bench0 logs in), and an admin token.
    url = f"sqlite:///{work / 'usersctl.db'}"
    env = {**os.environ, "USERSCTL_DATABASE_URL": url}
    rows = [{"name": f"User {n}", "email": f"bench{n}@example.com", "password": PASSWORD}
            for n in range(min(args.users, 1))]  # fmt: skip
    hashed = run_quiet(
        [python, "-c", "from argon2 import PasswordHasher; import sys; "
         f"print(PasswordHasher().hash({PASSWORD!r}))"], env,
    ).strip()  # fmt: skip
    lines = [json.dumps(rows[0])] + [
        json.dumps({"name": f"User {n}", "email": f"bench{n}@example.com",
                    "password_hash": hashed})
        for n in range(1, args.users)
    ]  # fmt: skip
    run_quiet([str(usersctl), "db", "upgrade"], env)  # (only the default location is implicit)
    run_quiet([str(usersctl), "import", "-", "--format", "jsonl"], env, stdin="\n".join(lines))
    token = json.loads(run_quiet([str(usersctl), "token", "create", "bench", "-o", "json"], env))
    auth = f"Authorization: Bearer {token['token']}"
    lua = work / "login.lua"
    lua.write_text(LOGIN_LUA.format(password=PASSWORD.replace(" ", "+").replace(",", "%2C")))

    # Both servers run the whole time (an idle one costs nothing) and are measured in turn,
    # round after round: on a shared machine the figures drift by tens of percent within a
    # minute, so each ratio compares two runs seconds apart, and the median round counts.
    servers: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], label: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=work, env=env,
            stdout=subprocess.DEVNULL, stderr=(work / f"{label}.log").open("w"),
        )  # fmt: skip
        servers.append(process)
        wait_ready(port, process)
        return f"http://127.0.0.1:{port}"

    try:
        tutorial = start([python, "-m", "uvicorn", "fastapi_app.main:app", "--no-access-log",
                          "--log-level", "warning"], "tutorial")  # fmt: skip
        usersctl_url = start([str(usersctl), "serve"], "usersctl")
        rounds = measure(args, tutorial, usersctl_url, auth, str(lua), python)
    finally:
        for process in servers:
            process.terminate()
            process.wait(timeout=60)
    report(args, rounds)
    return 0


CALLS = (  # (figure, server, path); the tutorial's GET /users/ returns every row
    ("tutorial GET /users/{id}", "tutorial", "/users/{middle}"),
    ("usersctl GET /users/{id}", "usersctl", "/users/{middle}"),
    ("tutorial GET /users/", "tutorial", "/users/"),
    ("usersctl GET /users/?limit=50", "usersctl", "/users/?limit=50"),
)


def measure(
    args: argparse.Namespace, tutorial: str, usersctl: str, auth: str, lua: str, python: str
) -> list[dict[str, dict[str, float]]]:
    rounds = []
    bases = {"tutorial": tutorial, "usersctl": usersctl}
    for number in range(1, args.rounds + 1):
        print(f"round {number} of {args.rounds} ...", file=sys.stderr, flush=True)
        figures: dict[str, dict[str, float]] = {}
        for name, server, path in CALLS:
            url = bases[server] + path.format(middle=args.users // 2)
            header = auth if server == "usersctl" else ""
            wrk(url, 2, args.connections, header=header)  # warm-up
            figures[name] = wrk(url, args.seconds, args.connections, header=header)
        # The argon2 bound just before the logins it is compared with. Logins use one
        # connection per core (more only queue behind argon2).
        figures["argon2"] = argon2_bound(python)
        cores = os.cpu_count() or 1
        wrk(usersctl + "/auth/token", 2, cores, script=lua)
        figures["usersctl POST /auth/token"] = wrk(
            usersctl + "/auth/token", args.seconds, cores, script=lua
        )
        figures["ratios"] = {
            "get": figures["usersctl GET /users/{id}"]["rps"]
            / figures["tutorial GET /users/{id}"]["rps"],
            "list": figures["usersctl GET /users/?limit=50"]["rps"]
            / figures["tutorial GET /users/"]["rps"],
            "login": figures["usersctl POST /auth/token"]["rps"] / figures["argon2"]["bound"],
        }
        rounds.append(figures)
    return rounds


def report(args: argparse.Namespace, rounds: list[dict[str, dict[str, float]]]) -> None:
    cores = os.cpu_count() or 1
    print(f"# usersctl serve vs the tutorial app: {args.users} users, SQLite, one uvicorn "
          f"worker each, wrk -t2 -c{args.connections} -d{args.seconds}s, {cores} cores, "
          f"{args.rounds} rounds (median round shown)")  # fmt: skip
    middle = sorted(rounds, key=lambda figures: figures["ratios"]["get"])[len(rounds) // 2]
    print(f"{'request':40} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name in [name for name, _, _ in CALLS] + ["usersctl POST /auth/token"]:
        figure = middle[name]
        print(f"{name:40} {figure['rps']:9.1f} {figure['p50']:8.2f} {figure['p99']:8.2f} "
              f"{int(figure['non2xx']):8d}")  # fmt: skip
    print()

    def median(key: str) -> str:
        values = sorted(figures["ratios"][key] for figures in rounds)
        each = ", ".join(f"{figures['ratios'][key]:.2f}" for figures in rounds)
        return f"{values[len(values) // 2]:.2f}x (rounds: {each})"

    argon2 = middle["argon2"]
    print(f"GET /users/{{id}}: {median('get')} the tutorial app (target >= 1.0x, aim 2x)")
    print(f"GET /users/?limit=50 vs the tutorial's GET /users/ (all {args.users} rows): "
          f"{median('list')}")  # fmt: skip
    print(f"POST /auth/token: {median('login')} the argon2 bound (target >= 0.8x)")
    print(f"  argon2 bound = {cores} cores / the CPU time of one verify "
          f"({argon2['cpu'] * 1000:.0f} ms) = {argon2['bound']:.1f}/s; one verify takes "
          f"{argon2['wall'] * 1000:.0f} ms wall on p={argon2['lanes']:.0f} lanes;")  # fmt: skip
    print(f"  {cores} threads doing nothing but verify reach {argon2['rate']:.1f}/s = "
          f"{argon2['rate'] / argon2['bound']:.2f}x the bound (cores / wall time, "
          f"{cores / argon2['wall']:.1f}/s, would exceed even that)")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
