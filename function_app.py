"""Azure Functions entry point (Python v2 programming model): registers the blueprints."""

import azure.functions as func

from functions.apply import bp as apply_bp
from functions.pull import bp as pull_bp

app = func.FunctionApp()
app.register_functions(pull_bp)
app.register_functions(apply_bp)
