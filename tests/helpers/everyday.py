"""The corpus of everyday programs (issue 18): real programs from the Debian archive,
each case a shell command line run in a directory of its own, with deterministic
inputs, in the default UTF-8 locale (LANG=C.UTF-8, no LC_ALL). Shared by the test at
home (tests/linux/test_everyday_programs.py) and the one that migrates the long
runs (tests/cluster/test_everyday_programs_away.py).

Threads: a MOSIX process has none, so the programs that start threads by default are
given the options that keep them single-threaded (docs/system-calls.md lists them):
``xz -T1``, ``zstd --single-thread --no-asyncio`` (``-T1`` alone still starts one
worker thread, and asynchronous I/O one more). GNU sort sizes its thread pool from the
affinity mask (one CPU under mosrun) and needs nothing."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

MAKEFILE = """\
CC = gcc
CFLAGS = -O1 -Wall
prog: main.o util.o
\t$(CC) -o $@ main.o util.o
%.o: %.c util.h
\t$(CC) $(CFLAGS) -c $<
"""
MAIN_C = '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%ld\\n", triangle(1000)); return 0; }\n'
UTIL_C = '#include "util.h"\nlong triangle(long n) { return n * (n + 1) / 2; }\n'
UTIL_H = "long triangle(long n);\n"

PYTHON = """\
import decimal, hashlib, json, re, sqlite3, subprocess, sys
data = open("../data/words.txt", encoding="utf-8").read().split()
print(json.dumps({"count": len(data), "first": data[:5], "é": "ü"}, ensure_ascii=False, sort_keys=True))
print(hashlib.sha256(" ".join(data).encode()).hexdigest(), hashlib.md5(b"mosix").hexdigest())
print(re.findall(r"\\b[a-z]{3}\\d\\b", " ".join(data))[:10])
db = sqlite3.connect(":memory:")
db.execute("create table w (word text, n integer)")
db.executemany("insert into w values (?, ?)", ((w, len(w)) for w in data))
print(db.execute("select n, count(*) from w group by n order by n").fetchall())
decimal.getcontext().prec = 60
print(decimal.Decimal(2).sqrt(), decimal.Decimal(1) / decimal.Decimal(7))
done = subprocess.run(["sort", "-u"], input="\\n".join(data[:200]), capture_output=True, text=True)
print(done.returncode, len(done.stdout.splitlines()), subprocess.check_output(["echo", "ünïcödé"], text=True), end="")
sys.exit(3)
"""
PYTHON_LOOP = """\
import sys
x = 0
for i in range(%d):
    x = (x * 31 + i * i) %% 1000003
    if i %% 100000 == 0:
        print(i, x, flush=True)
print("end", x)
print("input", len(sys.stdin.buffer.read()))
"""
PERL = r"""
use strict; use warnings; use utf8;
use List::Util qw(sum max first); use POSIX qw(floor strftime); use Digest::MD5 qw(md5_hex);
use Data::Dumper; $Data::Dumper::Sortkeys = 1; use Storable qw(dclone); use Text::Wrap qw(wrap);
use Time::Local qw(timegm);
binmode STDOUT, ":encoding(UTF-8)";
open my $in, "<", "../data/words.txt" or die; my @w = map { chomp; $_ } <$in>;
my %n; $n{length $_}++ for @w;
print Dumper(dclone(\%n));
print sum(map { length } @w), " ", max(map { length } @w), " ", (first { /9$/ } @w), "\n";
print md5_hex(join " ", @w), " ", floor(7.5), " ", strftime("%Y-%m-%d", gmtime(timegm(0, 0, 0, 29, 1, 2024))), "\n";
print wrap("", "  ", join(" ", @w[0..30])), "\n";
print "ünïcödé ", uc("straße"), "\n";
exit 4;
"""
PERL_LOOP = r"""
my $x = 0;
for my $i (0 .. %d) { $x = ($x * 31 + $i * $i) %% 1000003; print "$i $x\n" if $i %% 100000 == 0; $| = 1 }
print "end $x\n";
my $n = 0; $n += length while <STDIN>; print "input $n\n";
"""
GIT = (
    "git init -q -b main . && git add -A && git commit -q -m 'first: ünïcödé' && "
    "echo more >> a.txt && git commit -q -am second && git log --stat --format='%H %an %ad %s' && "
    "git show --stat HEAD~1 | head -5 && git status --short && git rev-parse HEAD"
)
AWK_STATS = '{ n[length($1)]++; s += $1 } END { for (k in n) t = t k ":" n[k] " "; print NR, s; print t | "sort"; close("sort") }'
TAR = "tar cf - -C ../data --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner ."

#: name → command line (run by bash in the case's directory)
CASES: dict[str, str] = {
    "sort-larger-than-its-buffer": "sort -S 64K -T . ../data/big.txt",
    "sort-numeric-reverse": "sort -n -r -k2 ../data/pairs.txt",
    "sort-unique-utf8": "sort -u ../data/text.txt",
    "ls-l": "ls -l --time-style=+%Y ../data",
    "wc": "wc ../data/big.txt ../data/text.txt; wc -m ../data/text.txt",
    "sha256sum": "sha256sum ../data/*",
    "md5sum": "md5sum ../data/big.txt ../data/words.txt",
    "cksum-b2sum": "cksum ../data/big.txt && b2sum ../data/words.txt",
    "cut": "cut -d' ' -f2 ../data/pairs.txt | head -50 && cut -c1-4 ../data/text.txt",
    "tr": "tr 'a-z' 'A-Z' < ../data/words.txt | tr -s 'AEIOU' | tail -20",
    "uniq": "sort ../data/words.txt | uniq -c | sort -k1,1nr -k2 | head -30",
    "join": "join ../data/left.txt ../data/right.txt",
    "split": "split -l 10000 -d ../data/big.txt part && ls && cat part* | md5sum",
    "du": "du -s --apparent-size ../data && du -a --apparent-size ../data | sort -k2",
    "date": "TZ=UTC date -d '2024-02-29 13:45:06' '+%A %d %B %Y %H:%M:%S %Z %s %j' && date -u -d @1234567890",
    "seq": "seq 1 7 500 | paste -sd+ && seq -w 0.5 0.25 3",
    "factor": "factor 1234567890123 600851475143 999999000001",
    "grep-E": "grep -E '^(12|34)+[05]' ../data/big.txt | head -100 && grep -c -E 'é|ü' ../data/text.txt",
    "grep-iw": "grep -i -w -n 'straße' ../data/text.txt; grep -v -c 1 ../data/big.txt",
    "sed": "sed -E 's/([0-9])([0-9])/\\2\\1/g; /^9/d' ../data/big.txt | tail -30 && sed -n '3,7p' ../data/text.txt",
    "gawk": f"gawk '{AWK_STATS}' ../data/pairs.txt && gawk '{{print toupper($0)}}' ../data/text.txt",
    "mawk": f"mawk '{AWK_STATS}' ../data/pairs.txt",
    "find": "find ../data -type f -name '*.txt' -size +1k | sort && find ../data -newer ../data -print | wc -l",
    "tar-gzip": f"{TAR} | gzip -n -6 | tee a.tgz | md5sum && tar tzf a.tgz | sort",
    "tar-bzip2": f"{TAR} | bzip2 -9 | tee a.tbz | md5sum && bzip2 -dc a.tbz | tar tf - | sort",
    "tar-xz": f"{TAR} | xz -T1 -6 | tee a.txz | md5sum && xz -T1 -dc a.txz | tar tf - | sort",
    "tar-zstd": f"{TAR} | zstd -q --single-thread --no-asyncio -3 | tee a.tzst | md5sum && "
    "zstd -q --no-asyncio -dc a.tzst | tar tf - | sort",
    "gzip-round-trip": "gzip -n -c ../data/big.txt > b.gz && gzip -l b.gz && gzip -dc b.gz | md5sum",
    "bc": "echo 'scale=60; 4*a(1); e(1); sqrt(2); 2^200' | bc -l",
    "dc": "dc -e '2 300 ^ p 10 k 1 3 / p 17 f'",
    "python3": "/usr/bin/python3 ../data/script.py",
    "perl": "perl ../data/script.pl",
    "sqlite3": 'sqlite3 t.db \'create table t (a, b); insert into t values (1, "é"), (2, "ü");\' && '
    "sqlite3 -header -column t.db 'select a, b, length(b), hex(b) from t order by a desc' && "
    "sqlite3 t.db 'pragma integrity_check'",
    "make-gcc": "cp ../data/project/* . && make && ./prog && make -q prog; echo made $?",
    "git": "cp ../data/text.txt a.txt && " + GIT,
    "openssl": "openssl dgst -sha256 ../data/words.txt && openssl dgst -md5 ../data/big.txt && "
    "openssl enc -aes-256-cbc -pbkdf2 -pass pass:mosix -S 0102030405060708 -in ../data/text.txt | openssl dgst -sha1",
    "head-tail-tac": "head -c 100 ../data/big.txt && tail -n 5 ../data/text.txt && tac ../data/text.txt | head -3",
    "nl-od-base64": "nl -ba ../data/text.txt | head && od -An -c ../data/text.txt | head -5 && base64 ../data/text.txt | md5sum",
    "comm-paste": "sort ../data/left.txt > l && sort ../data/right.txt > r && comm -3 l r | head && paste l r | tail -3",
    "xargs-expr": "seq 1 40 | xargs -n 7 echo && expr 7 \\* 191 && printf '%05.2f|%-6s|\\n' 3.14159 ünï",
    "stat-env": "stat -c '%n %s %F' ../data/*.txt && env -i A=1 B=2 env",
    "exit-status": "grep -q nothing-like-this ../data/text.txt; echo status $?; ls ../no-such-file; exit 7",
}
#: cases that keep running long enough to be moved twice (each reads all of stdin, which
#: can come slowly): name → argv, run in the case's directory
LONG: dict[str, list[str]] = {
    "sort-big": ["sort", "-S", "64K", "-T", ".", "-", "../data/big.txt"],
    "xz-large": ["xz", "-T1", "-6"],
    "python-loop": ["/usr/bin/python3", "../data/loop.py"],
    "perl-loop": ["perl", "../data/loop.pl"],
}


def write_inputs(data: Path, loop: int = 400_000) -> None:
    """The deterministic input files."""
    rng = random.Random(18)
    data.mkdir(parents=True, exist_ok=True)
    (data / "big.txt").write_text("".join(f"{rng.randrange(10**7)}\n" for _ in range(120_000)))
    syllables = ["ka", "mo", "six", "é", "ü", "ri", "ta", "na", "straße", "lo", "z9", "pe"]
    words = [
        "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) + str(rng.randint(0, 9)) for _ in range(5000)
    ]
    (data / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (data / "pairs.txt").write_text("".join(f"{w} {rng.randint(1, 999)}\n" for w in words[:3000]), encoding="utf-8")
    (data / "text.txt").write_text(
        "".join(f"Zeile {i}: {' '.join(words[i * 7 : i * 7 + 7])} — Straße Ünïcödé\n" for i in range(200)),
        encoding="utf-8",
    )
    keys = sorted({f"k{rng.randint(100, 999)}" for _ in range(400)})
    (data / "left.txt").write_text("".join(f"{k} {rng.choice(words)}\n" for k in keys[::2]), encoding="utf-8")
    (data / "right.txt").write_text("".join(f"{k} {rng.randint(0, 99)}\n" for k in keys[::3]), encoding="utf-8")
    project = data / "project"
    project.mkdir(exist_ok=True)
    for name, text in (("Makefile", MAKEFILE), ("main.c", MAIN_C), ("util.c", UTIL_C), ("util.h", UTIL_H)):
        (project / name).write_text(text)
    (data / "script.py").write_text(PYTHON)
    (data / "script.pl").write_text(PERL, encoding="utf-8")
    (data / "loop.py").write_text(PYTHON_LOOP % (loop * 5))
    (data / "loop.pl").write_text(PERL_LOOP % (loop * 5))
    for path in [data, *data.rglob("*")]:
        os.utime(path, (1_700_000_000, 1_700_000_000))


def environment(home: Path) -> dict[str, str]:
    """The default UTF-8 locale, no LC_ALL; the Debian archive's programs first; a
    fixed identity and date for git."""
    when = "2024-02-29T13:45:06+00:00"
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TZ": "UTC",
        "TMPDIR": str(home),
        "GIT_AUTHOR_NAME": "Ada Ünïcödé",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_AUTHOR_DATE": when,
        "GIT_COMMITTER_NAME": "Ada Ünïcödé",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
        "GIT_COMMITTER_DATE": when,
        "GIT_CONFIG_NOSYSTEM": "1",
        # the MOSIX code under test, when it is not the installed one (a comparison's)
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }


def fresh(directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory
