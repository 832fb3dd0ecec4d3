from sync.cli import app

app(prog_name="stepsync")
