from rtscli.cli import entry

entry()
