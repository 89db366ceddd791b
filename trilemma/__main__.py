from trilemma.cli import entry

entry()
