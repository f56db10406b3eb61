"""mosrun's command line (mosrun(1)): every option, every message, and the ways back out."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosix_core.contract.records import MosrunRequest
from mosix_core.errors import MosixError, ProtocolError
from mosix_core.mosrun.options import (
    INHERITED_LETTERS,
    LATER_FEATURES,
    MosrunOptions,
    UsageError,
    for_child_process,
    inherit,
    location_word,
    normalize_private_dir,
    parse,
    parse_queue_spec,
    to_argv,
)
from mosix_core.mosrun.options_wire import from_json, from_request, to_json, to_request


def opts(*argv: str) -> MosrunOptions:
    """The options of ``mosrun argv... prog``."""
    options, rest = parse([*argv, "prog"])
    assert rest == ["prog"]
    return options


def fails(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(argv)
    assert str(info.value) == message


# --- flags -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "field", "value"),
    [
        ("-e", "unsupported", "silent"),
        ("-w", "unsupported", "warn"),
        ("-u", "unsupported", "kill"),
        ("-L", "lock", True),
        ("-l", "lock", False),
        ("-g", "freezable", False),
        ("-G", "freezable", True),
        ("-c", "cpujob", True),
        ("-n", "cpujob", False),
        ("-t", "local_time", True),
        ("-T", "local_time", False),
        ("-F", "force", True),
        ("-z", "argv0_included", True),
    ],
)
def test_each_flag_sets_its_field_and_is_recorded(flag, field, value):
    options = opts(flag)
    assert getattr(options, field) == value
    assert options.explicit == {flag[1]}
    assert options.unsupported_explicit == (flag in ("-e", "-w", "-u"))
    # nothing else moves
    assert (
        attrs.evolve(
            options, **{field: getattr(MosrunOptions(), field)}, explicit=frozenset(), unsupported_explicit=False
        )
        == MosrunOptions()
    )


def test_no_options_is_the_default_record():
    assert parse(["prog", "a", "b"]) == (MosrunOptions(), ["prog", "a", "b"])
    assert MosrunOptions().decay == 9976 and MosrunOptions().unsupported == "kill"


def test_repeated_alternatives_the_last_one_wins():
    options = opts("-e", "-u")
    assert options.unsupported == "kill" and options.unsupported_explicit and options.explicit == {"u"}
    assert opts("-u", "-w").unsupported == "warn"
    assert opts("-L", "-l", "-L").lock is True
    assert opts("-g", "-G").freezable is True
    assert opts("-c", "-n").cpujob is False and opts("-c", "-n").explicit == {"n"}
    assert opts("-T", "-t").local_time is True
    assert opts("-m100", "-m200").memory_mb == 200
    assert opts("-d1", "-d", "2").decay == 2


def test_letters_cannot_be_combined():
    fails(["-eL", "prog"], "-eL: mosrun options cannot be combined: write -e -L")
    fails(["-bm500", "prog"], "unknown option -bm500 (-b takes no value)")
    fails(["-hello", "prog"], "unknown option -hello (-h takes no value)")
    fails(["-zz", "prog"], "-zz: mosrun options cannot be combined: write -z -z")


@pytest.mark.parametrize("word", ["-x", "-Q", "-v", "--help", "-é", "-3x", "-1.2.3", "-1.2.3.4.5"])
def test_unknown_options(word):
    fails([word, "prog"], f"unknown option {word}")


def test_a_lone_dash_is_refused_but_may_follow_double_dash():
    with pytest.raises(UsageError, match="unknown option -"):
        parse(["-"])
    assert parse(["--", "-"]) == (MosrunOptions(), ["-"])


# --- options with values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("letter", "text", "field", "value"),
    [
        ("m", "500", "memory_mb", 500),
        ("m", "0", "memory_mb", 0),
        ("m", "262143", "memory_mb", 262143),
        ("d", "0", "decay", 0),
        ("d", "10000", "decay", 10000),
        ("d", "9976", "decay", 9976),
        ("A", "0", "checkpoint_interval", 0),
        ("A", "10000000", "checkpoint_interval", 10000000),
        ("N", "3", "checkpoint_limit", 3),
        ("N", "10000000", "checkpoint_limit", 10000000),
        ("C", "mysave", "checkpoint_file", "mysave"),
        ("C", "/tmp/save.4", "checkpoint_file", "/tmp/save.4"),
    ],
)
def test_values_glued_or_in_the_next_argument(letter, text, field, value):
    glued, separate = opts(f"-{letter}{text}"), opts(f"-{letter}", text)
    assert glued == separate
    assert getattr(glued, field) == value and glued.explicit == {letter}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-mabc"], "-m: memory must be a number of MB between 0 and 262143, not 'abc'"),
        (["-m262144"], "-m: memory must be a number of MB between 0 and 262143, not '262144'"),
        (["-m+5"], "-m: memory must be a number of MB between 0 and 262143, not '+5'"),
        (["-m1_000"], "-m: memory must be a number of MB between 0 and 262143, not '1_000'"),
        (["-m٣"], "-m: memory must be a number of MB between 0 and 262143, not '٣'"),
        (["-d10001"], "-d: decay must be an integer between 0 and 10000, not '10001'"),
        (["-d", "0.5"], "-d: decay must be an integer between 0 and 10000, not '0.5'"),
        (["-S0"], "-S: maxjobs must be between 1 and 30000, not '0'"),
        (["-S30001"], "-S: maxjobs must be between 1 and 30000, not '30001'"),
        (["-A10000001"], "-A: minutes must be an integer between 0 and 10000000, not '10000001'"),
        (["-Nx"], "-N: the number of checkpoints must be an integer between 0 and 10000000, not 'x'"),
        (["-m" + "9" * 40], "-m: memory must be a number of MB between 0 and 262143, not '" + "9" * 40 + "'"),
    ],
)
def test_bad_numbers_name_the_option_and_range(argv, message):
    fails([*argv, "prog"], message)


@pytest.mark.parametrize(
    ("letter", "what"),
    [
        ("r", "host name"),
        ("m", "memory (MB)"),
        ("d", "decay"),
        ("S", "maxjobs"),
        ("C", "checkpoint file name"),
        ("X", "directory"),
        ("A", "minutes"),
        ("N", "maximum number of checkpoints"),
        ("R", "checkpoint file name"),
        ("O", "fd=filename"),
        ("I", "checkpoint file name"),
    ],
)
def test_a_missing_value_is_named(letter, what):
    message = f"-{letter}: missing {what}"
    fails([f"-{letter}"], message)  # nothing follows
    fails([f"-{letter}", "-e", "prog"], message)  # another option is not a value
    fails([f"-{letter}", ""], message)  # nor is an empty argument


def test_file_names_may_not_contain_nul():
    fails(["-Ca\0b", "prog"], "-C: the file name contains a NUL character")


# --- location ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "location", "node"),
    [
        (["-b"], "best", None),
        (["-h"], "home", None),
        (["-rnode7"], "node", "node7"),
        (["-r", "node7.example.org"], "node", "node7.example.org"),
        (["-r10.0.0.4"], "node", "10.0.0.4"),
        (["-r3"], "node", "3"),
        (["-3"], "node", "3"),
        (["-007"], "node", "7"),
        (["-65535"], "node", "65535"),
        (["-10.0.0.4"], "node", "10.0.0.4"),
        # alternatives: the last one given wins (an alias "mosrun -b" can still be sent home with -h)
        (["-b", "-h"], "home", None),
        (["-3", "-b"], "best", None),
        (["-h", "-rhost"], "node", "host"),
    ],
)
def test_location_options(argv, location, node):
    options = opts(*argv)
    assert (options.location, options.location_node) == (location, node)
    assert options.explicit == ({"best": {"b"}, "home": {"h"}, "node": {"r"}}[location])


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("-0", "-0: node numbers are between 1 and 65535"),
        ("-65536", "-65536: node numbers are between 1 and 65535"),
        ("-10.0.0.256", "-10.0.0.256: not a valid IP address"),
        ("-r-x", "-r: '-x' is not a host name, an IP address or a node number"),
        ("-rbad_host!", "-r: 'bad_host!' is not a host name, an IP address or a node number"),
        ("-r1.2.3", "-r: '1.2.3' is not a host name, an IP address or a node number"),
        ("-r0", "-r: '0' is not a host name, an IP address or a node number"),
    ],
)
def test_bad_locations(word, message):
    fails([word, "prog"], message)


def test_location_word_writes_each_form_back():
    assert location_word(MosrunOptions()) is None
    assert location_word(opts("-b")) == "-b" and location_word(opts("-h")) == "-h"
    assert location_word(opts("-r3")) == "-3" and location_word(opts("-1.2.3.4")) == "-1.2.3.4"
    assert location_word(opts("-rhost")) == "-rhost"


# --- where options end -------------------------------------------------------------------------------------


def test_options_end_at_the_program_and_its_arguments_are_untouched():
    options, rest = parse(["-m10", "prog", "-e", "-m20", "--", "x"])
    assert options.memory_mb == 10 and options.unsupported == "kill"
    assert rest == ["prog", "-e", "-m20", "--", "x"]


def test_double_dash_ends_options():
    options, rest = parse(["-e", "--", "-weird-program", "-b"])
    assert options.unsupported == "silent" and options.location is None
    assert rest == ["-weird-program", "-b"]
    assert parse(["--", "--"]) == (MosrunOptions(), ["--"])


def test_a_program_is_required():
    fails([], "no program to run")
    fails(["-e", "-m5"], "no program to run")
    fails(["-e", "--"], "no program to run")


# --- private directories (-X) -------------------------------------------------------------------------------


def test_private_directories_accumulate_normalised_without_repeats():
    options = opts("-X/tmp/a", "-X", "/scratch/", "-X//tmp//a/./", "-X/")
    assert options.private_dirs == ("/tmp/a", "/scratch", "/")
    assert options.explicit == {"X"}
    assert opts("-X/etcetera").private_dirs == ("/etcetera",)  # only within /etc is refused


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tmp", "Invalid private-directory name (tmp)"),
        ("./tmp", "Invalid private-directory name (./tmp)"),
        ("/tmp/../etc", "Invalid private-directory name (/tmp/../etc)"),
        ("/tmp/a..b", "Invalid private-directory name (/tmp/a..b)"),
        ("/etc", "Disallowed private-directory name (/etc)"),
        ("/etc/x", "Disallowed private-directory name (/etc/x)"),
        ("/proc/self", "Disallowed private-directory name (/proc/self)"),
        ("/sys/", "Disallowed private-directory name (/sys/)"),
        ("//dev//shm", "Disallowed private-directory name (//dev//shm)"),
        ("/./dev", "Disallowed private-directory name (/./dev)"),
        ("/" + "a" * 256, "Private directory name too long"),
    ],
)
def test_private_directory_rules_in_the_manuals_words(name, message):
    fails([f"-X{name}", "prog"], message)
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        normalize_private_dir(name)


def test_private_directory_limits():
    assert opts("-X/" + "a" * 255).private_dirs == ("/" + "a" * 255,)  # 256 characters
    ten = [f"-X/d{i}" for i in range(10)]
    assert len(opts(*ten).private_dirs) == 10
    assert len(opts(*ten, "-X/d0/").private_dirs) == 10  # a repeat is no eleventh
    fails([*ten, "-X/d10", "prog"], "Too many private directories")


# --- queues (-S) ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "spec"),
    [
        (["cmds"], "cmds"),
        (["cmds,failed"], "cmds,failed"),
        (["cmds,", "failed"], "cmds,failed"),
        (["cmds", ",failed"], "cmds,failed"),
        (["cmds", ",", "failed"], "cmds,failed"),
    ],
)
def test_queue_takes_one_commands_file_spec(words, spec):
    options, rest = parse(["-S20", "-m100", *words])
    assert options.queue_jobs == 20 and options.memory_mb == 100 and rest == [spec]


def test_queue_operand_errors():
    fails(["-S4"], "-S: no commands-file given")
    fails(["-S4", "a", "b"], "-S: expected a commands-file (and optionally ,failed-file), not 2 words")
    fails(["-S4", "a,", "b,c"], "-S: expected a commands-file (and optionally ,failed-file), not 2 words")
    fails(["-S4", ",failed"], "-S: the commands-file name is empty")
    fails(["-S4", "cmds,"], "-S: the failed-commands file name after ',' is empty")


def test_parse_queue_spec():
    assert parse_queue_spec("cmds") == ("cmds", None)
    assert parse_queue_spec("cmds,failed") == ("cmds", "failed")
    assert parse_queue_spec("cmds,fail,ed") == ("cmds", "fail,ed")  # the first comma separates
    with pytest.raises(UsageError, match="commands-file name is empty"):
        parse_queue_spec("")


# --- checkpoints: -R, -O, -I ---------------------------------------------------------------------------------


def test_recover_with_location_options_and_redirections():
    options, rest = parse(["-R/tmp/ckpt.7", "-O1=out,2=err", "-O", "@5=a,b@6=c", "-b", "-L", "-g", "-F", "-A5", "-N3"])
    assert rest == []
    assert options.recover == "/tmp/ckpt.7"
    assert options.redirect == ((1, "out"), (2, "err"), (5, "a,b"), (6, "c"))
    assert options.location == "best" and options.lock and not options.freezable and options.force
    assert options.checkpoint_interval == 5 and options.checkpoint_limit == 3


def test_redirect_names_may_contain_the_other_separator_and_equals():
    options, _ = parse(["-R", "x", "-O1=a=b", "-O%2=c,d%3=e@f"])
    assert options.redirect == ((1, "a=b"), (2, "c,d"), (3, "e@f"))


@pytest.mark.parametrize("letter", sorted("mewuCzcndXtT"))
def test_program_options_are_not_permitted_with_recover(letter):
    word = {"m": "-m5", "C": "-Cx", "d": "-d5", "X": "-X/tmp"}.get(letter, f"-{letter}")
    fails(["-Rfile", word], f"Program options are not permitted with -R (-{letter})")


def test_recover_errors():
    fails(["-Rfile", "-e", "-m5"], "Program options are not permitted with -R (-e -m)")
    fails(["-Rfile", "-S3"], "-S cannot be combined with -R")
    fails(["-Rfile", "prog"], "-R: no program may be given (it comes from the checkpoint file), found 'prog'")
    fails(["-O1=a", "prog"], "-O is only allowed with -R")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1", "-O: expected fd=filename, not '1'"),
        ("x=a", "-O: expected fd=filename, not '=a' (items separated by 'x')"),
        ("1=", "-O: expected fd=filename, not '1='"),
        ("1=a,", "-O: expected fd=filename, not ''"),
        ("@", "-O: expected fd=filename, not '' (items separated by '@')"),
        ("1=a,,2=b", "-O: expected fd=filename, not ''"),
        ("1024=a", "-O: file-descriptor 1024 is out of range (0 to 1023)"),
        ("1=a,1=b", "-O: file-descriptor 1 is redirected twice"),
        ("1=a\0", "-O: the file name contains a NUL character"),
    ],
)
def test_redirect_errors(spec, message):
    fails(["-Rfile", f"-O{spec}"], message)


def test_inspect_is_used_alone():
    options, rest = parse(["-I", "ckpt.1"])
    assert options.inspect == "ckpt.1" and options.explicit == {"I"} and rest == []
    fails(["-Ickpt.1", "-b"], "-I must be used alone: mosrun -I{filename}")
    fails(["-e", "-Ickpt.1"], "-I must be used alone: mosrun -I{filename}")
    fails(["-Ickpt.1", "prog"], "-I: no program may be given (it comes from the checkpoint file), found 'prog'")


def test_usage_errors_are_mosix_errors():
    assert issubclass(UsageError, MosixError)


# --- recursive mosrun and child processes ----------------------------------------------------------------------


def test_recursive_mosrun_inherits_only_the_listed_options():
    parent, _ = parse(
        ["-m500", "-e", "-L", "-g", "-c", "-d100", "-t", "-b", "-F", "-z", "-Csave", "-N3", "-A5", "-X/tmp", "prog"]
    )
    child = inherit(parent, MosrunOptions())
    assert child == MosrunOptions(
        memory_mb=500,
        unsupported="silent",
        unsupported_explicit=True,
        lock=True,
        freezable=False,
        cpujob=True,
        decay=100,
        local_time=True,
        explicit=frozenset("meLgcdt"),
    )
    assert set("cdeLlgGmnTtuw") == INHERITED_LETTERS


def test_the_childs_own_options_win_over_the_parents():
    parent = opts("-m500", "-e", "-L", "-d100")
    child = inherit(parent, opts("-u", "-l", "-m20", "-h"))
    assert (child.unsupported, child.lock, child.memory_mb, child.decay, child.location) == (
        "kill",
        False,
        20,
        100,
        "home",
    )
    assert child.explicit == set("ulmhd") and child.unsupported_explicit


def test_inherited_values_come_from_the_parent_even_when_it_only_inherited_them():
    grandparent = opts("-w")
    parent = inherit(grandparent, opts("-b"))
    grandchild = inherit(parent, MosrunOptions())
    assert grandchild.unsupported == "warn" and grandchild.unsupported_explicit and grandchild.location is None


def test_a_parent_known_only_by_its_values_passes_them_on_as_options():
    # e.g. the parent's record rebuilt from its run-time state, which has no letters
    parent = MosrunOptions(unsupported="warn", memory_mb=64, lock=True, decay=100, freezable=True)
    child = inherit(parent, opts("-b"))
    assert child == opts("-b", "-w", "-m64", "-L", "-d100")
    assert from_json(to_json(child)) == child


def test_a_parent_without_options_gives_defaults():
    assert inherit(MosrunOptions(), opts("-b")) == opts("-b")


def test_recovering_and_inspecting_children_inherit_less():
    parent = opts("-m500", "-e", "-L", "-g", "-d5")
    recovering, _ = parse(["-Rfile"])
    child = inherit(parent, recovering)
    assert child.lock and not child.freezable and child.memory_mb is None and child.unsupported == "kill"
    assert to_argv(child) == ["-L", "-g", "-Rfile"]
    inspecting, _ = parse(["-Ifile"])
    assert inherit(parent, inspecting) == inspecting


def test_forked_children_keep_everything_but_checkpoint_settings():
    options = opts("-m5", "-e", "-Csave", "-N3", "-A5", "-X/tmp", "-b")
    child = for_child_process(options)
    assert child == attrs.evolve(
        options,
        checkpoint_file=None,
        checkpoint_limit=None,
        checkpoint_interval=None,
        explicit=options.explicit - {"C", "N", "A"},
    )
    recovered, _ = parse(["-Rfile", "-O1=a", "-A5"])
    assert for_child_process(recovered) == MosrunOptions()
    queued, _ = parse(["-S3", "-m7", "cmds"])
    assert for_child_process(queued) == opts("-m7")


# --- writing back ----------------------------------------------------------------------------------------------


def test_to_argv_writes_one_glued_word_per_option():
    options = opts("-r", "node1", "-m", "500", "-e", "-l", "-G", "-d", "9976", "-X", "/tmp/")
    assert to_argv(options) == ["-rnode1", "-e", "-l", "-G", "-m500", "-d9976", "-X/tmp"]
    assert to_argv(MosrunOptions()) == []
    assert to_argv(MosrunOptions(), ["prog", "-x"]) == ["prog", "-x"]
    assert to_argv(MosrunOptions(), ["-prog"]) == ["--", "-prog"]


def test_to_argv_picks_a_separator_the_file_name_lacks():
    options, _ = parse(["-Rf", "-O@1=a,b", "-O%2=c,@", "-O3=plain"])
    words = to_argv(options)
    assert words == ["-Rf", "-O@1=a,b", "-O%2=c,@", "-O3=plain"]
    nasty = "," + "@%:+^~!|;"
    options = attrs.evolve(options, redirect=((4, nasty),))
    word = to_argv(options)[-1]
    assert parse(["-Rf", word])[0].redirect == ((4, nasty),)


def test_later_features_name_real_options():
    assert set(LATER_FEATURES) == {"-L", "-l", "-c", "-n", "-d", "-C", "-N", "-A", "-R", "-O", "-I", "-X", "-g", "-G"}
    assert set(LATER_FEATURES.values()) == {"automatic migration", "checkpoints", "private temporary files", "freezing"}
    with pytest.raises(TypeError):
        LATER_FEATURES["-m"] = "x"  # type: ignore[index]


# --- JSON and site-policy requests -------------------------------------------------------------------------------


def test_json_round_trip_through_text():
    options = opts("-m5", "-w", "-3", "-X/a", "-X/b")
    data = json.loads(json.dumps(to_json(options)))
    assert data["explicit"] == ["X", "m", "r", "w"] and data["private_dirs"] == ["/a", "/b"]
    assert from_json(data) == options
    recovered, _ = parse(["-Rf", "-O1=a"])
    assert from_json(json.loads(json.dumps(to_json(recovered)))) == recovered


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory_mb": "5"}, "memory_mb has the wrong type"),
        ({"memory_mb": True}, "memory_mb has the wrong type"),
        ({"lock": 1}, "lock has the wrong type"),
        ({"bogus": 1}, "unknown field 'bogus'"),
        ({"redirect": [[1]]}, "redirect must be a list of"),
        ({"redirect": "1=a"}, "redirect must be a list"),
        ({"private_dirs": [1]}, "private_dirs must be a list of strings"),
        ({"memory_mb": 999999, "explicit": ["m"]}, "mosrun options: -m: memory must be"),
        ({"private_dirs": ["/etc"], "explicit": ["X"]}, r"Disallowed private-directory name \(/etc\)"),
        ({"unsupported": "silent"}, "inconsistent"),  # -e without the letter
        ({"unsupported": "sometimes", "explicit": ["e"]}, "inconsistent"),
        ({"private_dirs": ["/tmp/"], "explicit": ["X"]}, "inconsistent"),  # not normalised
        ({"location": "moon"}, "inconsistent"),
        ({"location": "node", "location_node": "a b", "explicit": ["r"]}, "not a host name"),
        ({"recover": "f", "memory_mb": 5, "explicit": ["R", "m"]}, "Program options are not permitted"),
    ],
)
def test_from_json_refuses_anything_a_command_line_could_not_say(change, message):
    data = {**to_json(MosrunOptions()), **change}
    with pytest.raises(ProtocolError, match=message):
        from_json(data)


def test_from_json_needs_an_object():
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        from_json([1, 2])
    assert from_json({}) == MosrunOptions()


def test_request_carries_location_memory_queue_and_glued_options():
    options, rest = parse(["-S5", "-m300", "-3", "-e", "-d", "100", "-X", "/tmp", "cmds,failed"])
    request = to_request(options, rest, uid=1000, user="alice", etc="/etc/mosix")
    assert request == MosrunRequest(
        uid=1000,
        user="alice",
        argv=("cmds,failed",),
        location="-3",
        memory_mb=300,
        options=("-e", "-d100", "-X/tmp"),
        queue_jobs=5,
        etc="/etc/mosix",
    )
    assert from_request(request) == (options, rest)
    # what a policy changes comes back as options
    changed = attrs.evolve(request, location="-b", options=(*request.options, "-u"))
    again, _ = from_request(changed)
    assert again.location == "best" and again.unsupported == "kill" and again.explicit == set("bmSuXd")


def test_request_round_trip_with_a_dashed_program():
    options, rest = parse(["-e", "--", "-prog"])
    assert from_request(to_request(options, rest, uid=0, user="root")) == (options, rest)


# --- property: whatever parses writes back to the same thing -------------------------------------------------------

HOSTS = st.sampled_from(["node1", "n-2.example.org", "a", "10.0.0.7", "12", "007"])
FILE_NAMES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), min_size=1, max_size=12)
SAFE_NAMES = st.text("abcXYZ_-.,=@% 09é", min_size=1, max_size=10)


def number(low, high):
    return st.integers(low, high).map(str)


def valued(letter, values):
    """A value option, glued or as the next argument (when that cannot look like an option)."""
    return st.tuples(values, st.booleans()).map(
        lambda pair: [f"-{letter}", pair[0]] if pair[1] and not pair[0].startswith("-") else [f"-{letter}{pair[0]}"]
    )


PRIVATE_DIRS = st.lists(
    st.text("abc./", min_size=0, max_size=8).map(lambda s: "/" + s).filter(lambda s: ".." not in s), max_size=12
)

LOCATION_OPTIONS = st.one_of(
    st.sampled_from([["-b"], ["-h"], ["-L"], ["-l"], ["-g"], ["-G"], ["-F"]]),
    valued("r", HOSTS),
    number(1, 65535).map(lambda n: [f"-{n}"]),
    st.tuples(*[st.integers(1, 254)] * 4).map(lambda q: ["-" + ".".join(map(str, q))]),
    valued("A", number(0, 10_000_000)),
    valued("N", number(0, 10_000_000)),
)
PROGRAM_OPTIONS = st.one_of(
    st.sampled_from([["-e"], ["-w"], ["-u"], ["-z"], ["-c"], ["-n"], ["-t"], ["-T"]]),
    valued("m", number(0, 262143)),
    valued("d", number(0, 10000)),
    valued("C", FILE_NAMES),
)
REDIRECTS = st.lists(st.tuples(st.integers(0, 1023), SAFE_NAMES), max_size=4, unique_by=lambda pair: pair[0])


def redirect_word(pair):
    fd, name = pair
    return [f"-O{fd}={name}"] if "," not in name else [f"-O:{fd}={name}"] if ":" not in name else [f"-O;{fd}={name}"]


@st.composite
def command_lines(draw):
    mode = draw(st.sampled_from(["run", "queue", "recover", "inspect"]))
    if mode == "inspect":
        return draw(valued("I", FILE_NAMES)), []
    if mode == "recover":
        # -R and -O may come anywhere among the location options
        groups = [
            draw(valued("R", FILE_NAMES)),
            *map(redirect_word, draw(REDIRECTS)),
            *draw(st.lists(LOCATION_OPTIONS, max_size=6)),
        ]
        return [w for group in draw(st.permutations(groups)) for w in group], []
    groups = [*draw(st.lists(LOCATION_OPTIONS, max_size=6)), *draw(st.lists(PROGRAM_OPTIONS, max_size=6))]
    dirs = draw(PRIVATE_DIRS)
    if len({normalize_private_dir(d) for d in dirs}) <= 10:
        groups += [[f"-X{d}"] for d in dirs]
    if mode == "queue":
        groups.append(draw(valued("S", number(1, 30000))))
        program = [draw(st.sampled_from(["cmds", "cmds,failed", "-dashed", "a,b,c"]))]
    else:
        program = draw(st.lists(st.text(max_size=6), min_size=1, max_size=4))
    return [w for group in draw(st.permutations(groups)) for w in group], program


@settings(max_examples=400, deadline=None)
@given(command_lines())
def test_every_command_line_writes_back_to_itself(line):
    words, program = line
    argv = [*words, *(["--"] if program and program[0].startswith("-") else []), *program]
    options, rest = parse(argv)
    assert rest == program
    assert parse(to_argv(options, rest)) == (options, rest)
    assert from_json(json.loads(json.dumps(to_json(options)))) == options
    assert from_request(to_request(options, rest, uid=5, user="u")) == (options, rest)
    # alternatives: the record keeps exactly one letter for each thing set
    for group in ("ewu", "Ll", "gG", "cn", "tT", "bhr"):
        assert len(options.explicit & set(group)) <= 1
    assert options.unsupported_explicit == bool(options.explicit & set("ewu"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["-e", "-w", "-u", "-L", "-l", "-g", "-G", "-c", "-n", "-t", "-T", "-b", "-h", "-3", "-m1", "-m2"]
        ),
        max_size=10,
    )
)
def test_the_last_alternative_wins(flags):
    model = {
        "unsupported": "kill",
        "lock": False,
        "freezable": True,
        "cpujob": False,
        "local_time": False,
        "location": None,
        "memory_mb": None,
    }
    effect = {
        "-e": ("unsupported", "silent"),
        "-w": ("unsupported", "warn"),
        "-u": ("unsupported", "kill"),
        "-L": ("lock", True),
        "-l": ("lock", False),
        "-g": ("freezable", False),
        "-G": ("freezable", True),
        "-c": ("cpujob", True),
        "-n": ("cpujob", False),
        "-t": ("local_time", True),
        "-T": ("local_time", False),
        "-b": ("location", "best"),
        "-h": ("location", "home"),
        "-3": ("location", "node"),
        "-m1": ("memory_mb", 1),
        "-m2": ("memory_mb", 2),
    }
    for flag in flags:
        field, value = effect[flag]
        model[field] = value
    options = opts(*flags)
    assert {field: getattr(options, field) for field in model} == model


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=5), st.lists(st.text(max_size=8), max_size=5))
def test_parse_never_fails_with_anything_but_a_usage_error(before, after):
    try:
        parse([*before, *after])
    except UsageError:
        pass
