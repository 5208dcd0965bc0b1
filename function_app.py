"""Azure Functions entry point (Python v2 programming model): registers the blueprints.

pull (timer), files_arrived (Event Grid: a file in a files inbox), apply (Service Bus; its settlement mode comes from the app setting SETTLEMENT_MODE, read here at
indexing time) and the admin HTTP functions.
"""

import azure.functions as func

from functions.admin import bp as admin_bp
from functions.apply import bp as apply_bp
from functions.files import bp as files_bp
from functions.pull import bp as pull_bp
from shared import telemetry

telemetry.configure()  # once per worker, before any function runs; see shared/telemetry.py

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(pull_bp)
app.register_functions(apply_bp)
app.register_functions(admin_bp)
app.register_functions(files_bp)
