from fleetfit.agent.cli import app

app()
