"""Structural checks of infra/*.bicep, parsed with pycep (no Bicep compiler can be installed here).

What a deployment would only reveal late, checked offline: modules wired with the parameters they need, the
resources and the security properties issue 7 asks for, each role assignment scoped to its one resource with the
right built-in role, the queue's create-only properties, and every app setting the code reads set in Azure.

pycep's JSON form writes a parameter reference and a string literal alike ("tables" vs flowsFile); `ref()` tells
them apart by looking the name up in the template's parameters and variables.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from shared.settings import APP_SETTINGS
from shared.state.store import TABLES
from tests.infra.conftest import INFRA, ROOT, bicep_files, template

MAIN = "main.bicep"

# Built-in role definition ids, from the Azure built-in roles reference
# (learn.microsoft.com/azure/role-based-access-control/built-in-roles; MicrosoftDocs/azure-docs
# articles/role-based-access-control/built-in-roles.md), and the one resource type each may be scoped to.
SB_QUEUE = "Microsoft.ServiceBus/namespaces/queues"
BLOB_CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"  # never the whole account
ROLES: dict[str, tuple[str, str]] = {
    "090c5cfd-751d-490a-894a-3ce6f1109419": ("Azure Service Bus Data Owner", SB_QUEUE),
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": ("Storage Blob Data Owner", BLOB_CONTAINER),
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": ("Storage Blob Data Contributor", BLOB_CONTAINER),
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": ("Storage Blob Data Reader", BLOB_CONTAINER),
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": ("Storage Table Data Contributor", "Microsoft.Storage/storageAccounts"),
    "4633458b-17de-408a-b874-0445c86b69e6": ("Key Vault Secrets User", "Microsoft.KeyVault/vaults"),
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": ("Key Vault Secrets Officer", "Microsoft.KeyVault/vaults"),
    "3913510d-42f4-4e42-8a64-420c390055eb": ("Monitoring Metrics Publisher", "Microsoft.Insights/components"),
}
# The function app's identity holds exactly these (issue 7), no more.
APP_IDENTITY_ROLES = {
    # send, receive, settle, and Manage on the queue alone: queue counts for `dualsync status` / GET /api/flows and
    # the scale controller's queue length for target-based scaling (docs/deploy.md says why not Sender + Receiver)
    "Azure Service Bus Data Owner",
    "Storage Blob Data Owner",  # the host's own containers only
    "Storage Blob Data Reader",  # the deployment package: read, never rewrite
    "Storage Blob Data Contributor",  # the claim check
    "Storage Table Data Contributor",
    "Key Vault Secrets User",
    "Monitoring Metrics Publisher",
}

# APP_SETTINGS names the Bicep deliberately does not set, and why.
EXCLUDED: dict[str, str] = {
    "STATE_SQLITE_PATH": "embedded runtime only; Azure runs with STATE_BACKEND=tables",
    "BUS_SQLITE_PATH": "embedded runtime only; Azure runs with BUS_BACKEND=servicebus",
    "STATE_TABLES_CONNECTION": (
        "connection-string alternative to STATE_TABLES_ENDPOINT; the account has shared-key access disabled, and "
        "when set it would win over the identity-based endpoint"
    ),
    "WEBSITE_AUTH_ENABLED": "set by the platform when App Service authentication (authsettingsV2 in infra/app/function-app.bicep) is on",
    "PAYLOAD_BLOB_CONNECTION": (
        "connection-string alternative to PAYLOAD_BLOB_ENDPOINT; the account has shared-key access disabled, and "
        "when set it would win over the identity-based endpoint"
    ),
    "ServiceBusConnection": (
        "connection-string alternative to ServiceBusConnection__fullyQualifiedNamespace; the namespace has local "
        "(SAS) auth disabled, and when set both the code and the Functions host would use it instead"
    ),
}
# Settings the Bicep sets that dualsync's code does not read: the Functions host and platform read them.
HOST_SETTINGS: dict[str, str] = {
    "AzureWebJobsStorage__accountName": "host storage, identity-based (no AzureWebJobsStorage connection string)",
    "AzureWebJobsStorage__credential": "host storage: use the managed identity",
    "AzureWebJobsStorage__clientId": "host storage: which (user-assigned) identity",
    "ServiceBusConnection__credential": "apply trigger connection: use the managed identity",
    "ServiceBusConnection__clientId": "apply trigger connection: which identity",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Entra ID auth for host telemetry (local auth is disabled)",
    "PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME": "the logger the Python worker's Azure Monitor collects: 'dualsync' "
                                              "(tests/unit/test_telemetry_once.py)",
}
# Connector secrets: read through flows.yaml references (env:NAME, shared.config.resolve_secret).
CONNECTOR_SECRETS = {"CRM_CLIENT_SECRET", "ERP_DB_URL"}
# Settings Flex Consumption rejects or that would bring back shared keys.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",
}


# -- helpers over pycep's JSON -------------------------------------------------------------------------


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's own properties, unwrapped from pycep's loop / condition envelopes."""
    config = resource["config"]
    while "loop_type" in config or ("condition" in config and "config" in config):
        config = config["config"]
    return config


def envelope(resource: dict[str, Any]) -> dict[str, Any]:
    config = resource["config"]
    return config if ("loop_type" in config or "condition" in config) and "config" in config else {}


def resources(name: str, rtype: str | None = None) -> dict[str, dict[str, Any]]:
    found = template(name).get("resources", {})
    return {k: v for k, v in found.items() if rtype is None or v["type"] == rtype}


def only(name: str, rtype: str) -> dict[str, Any]:
    found = resources(name, rtype)
    assert len(found) == 1, f"{name}: expected one {rtype}, found {sorted(found)}"
    return next(iter(found.values()))


def ref(name: str, value: Any) -> tuple[str, Any]:
    """('param' | 'var' | 'literal' | 'expr', value) for a value pycep produced."""
    t = template(name)
    if isinstance(value, str):
        if value in t.get("parameters", {}):
            return "param", value
        if value in t.get("variables", {}):
            return "var", value
        return "literal", value
    if isinstance(value, bool | int | float) or value is None:
        return "literal", value
    return "expr", value


def accessor(value: Any) -> list[str]:
    """a.b.c as ['a', 'b', 'c'] (pycep nests property accessors); [] if it is something else."""
    if isinstance(value, str):
        return [value]
    operator = value.get("operator", {}) if isinstance(value, dict) else {}
    if operator.get("type") == "property_accessor":
        operands = operator["operands"]
        return accessor(operands["operand_1"]) + accessor(operands["operand_2"])
    return []


def param_default(name: str, param: str) -> Any:
    return template(name)["parameters"][param].get("default")


def decorators(name: str, param: str) -> dict[str, Any]:
    return {d["type"]: d.get("argument") for d in template(name)["parameters"][param].get("decorators", [])}


def app_settings() -> dict[str, Any]:
    site = body(only("app/function-app.bicep", "Microsoft.Web/sites"))
    listed = site["properties"]["siteConfig"]["appSettings"]
    kind, var = ref("app/function-app.bicep", listed)
    assert kind == "var", "siteConfig.appSettings should be the appSettings variable"
    entries = template("app/function-app.bicep")["variables"][var]["value"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {e["name"]: e["value"] for e in entries}


def module_params(module: str) -> dict[str, Any]:
    return template(MAIN)["modules"][module]["config"]["params"]


# -- parsing and wiring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", bicep_files())
def test_template_parses_completely(name):
    """pycep reads every declaration (child resources are top-level with `parent:` so no parser drops them)."""
    parsed = template(name)
    text = (INFRA / name).read_text()
    declared = set(re.findall(r"^resource (\w+) '", text, re.MULTILINE))
    assert declared == set(parsed.get("resources", {})), f"{name}: pycep did not read every resource"
    assert not re.search(r"^[ \t]+resource \w+ '", text, re.MULTILINE), f"{name}: nested resource declaration"
    assert set(re.findall(r"^param (\w+) ", text, re.MULTILINE)) == set(parsed.get("parameters", {}))
    assert set(re.findall(r"^module (\w+) ", text, re.MULTILINE)) == set(parsed.get("modules", {}))


def test_main_deploys_to_a_resource_group():
    assert template(MAIN)["globals"]["scope"]["value"] == "resourceGroup"


def test_modules_get_the_parameters_they_need():
    modules = template(MAIN)["modules"]
    assert set(modules) == {
        "identity", "monitoring", "storage", "serviceBus", "keyVault", "rbac", "functionApp", "diagnostics",
        "alerts", "workbook",
    }
    for module, declaration in modules.items():
        path = declaration["detail"]["path"]
        assert (INFRA / path).exists(), f"module {module}: {path} does not exist"
        declared = template(path).get("parameters", {})
        given = declaration["config"]["params"]
        assert set(given) <= set(declared), f"module {module} gets unknown parameters {set(given) - set(declared)}"
        required = {p for p, d in declared.items() if d.get("default") is None}
        assert required <= set(given), f"module {module} misses required parameters {required - set(given)}"


def test_function_app_waits_for_its_role_assignments():
    assert "rbac" in template(MAIN)["modules"]["functionApp"]["config"].get("dependsOn", [])


# Variables azd itself provides to main.parameters.json; every other ${VAR} there is one the user sets
# (`azd env set VAR value`, or azd asks when a required one is empty) and docs/deploy.md names it.
AZD_PROVIDED = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID"}


def test_parameters_file_matches_main():
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = template(MAIN)["parameters"]
    assert set(parameters) <= set(declared), f"unknown parameters: {set(parameters) - set(declared)}"
    required = {p for p, d in declared.items() if d.get("default") is None}
    assert required <= set(parameters), f"azd would have nothing to map these to: {required - set(parameters)}"
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    for param, entry in parameters.items():
        azd_variable = re.fullmatch(r"\$\{([A-Z_]+)\}", str(entry["value"]))
        if azd_variable:  # azd substitutes it; a required parameter left empty is asked for
            assert azd_variable[1] in AZD_PROVIDED or azd_variable[1] in deploy_doc, azd_variable[1]
            continue
        assert "${" not in str(entry["value"]), f"{param}: only whole-value azd references"
        allowed = decorators(MAIN, param).get("allowed")
        if allowed is not None:
            assert entry["value"] in allowed, f"{param}={entry['value']!r} not in {allowed}"
        default = declared[param].get("default")
        if isinstance(default, str | int) and not isinstance(default, bool):
            assert entry["value"] == default, f"{param}: parameters file {entry['value']!r} != default {default!r}"


def test_defaults_agree_with_the_code():
    assert param_default(MAIN, "applyQueueName") == APP_SETTINGS["APPLY_QUEUE"][0]
    assert param_default(MAIN, "stateTablePrefix") == APP_SETTINGS["STATE_TABLE_PREFIX"][0]
    assert param_default(MAIN, "pullSchedule") == APP_SETTINGS["PULL_SCHEDULE"][0]
    assert param_default(MAIN, "flowsFile") == APP_SETTINGS["DUALSYNC_CONFIG"][0]
    assert param_default(MAIN, "settlementMode") == APP_SETTINGS["SETTLEMENT_MODE"][0]
    assert str(param_default(MAIN, "maxAttempts")) == APP_SETTINGS["MAX_ATTEMPTS"][0]
    assert set(decorators(MAIN, "settlementMode")["allowed"]) == {"extension", "ledger"}


# -- resources and their properties ------------------------------------------------------------------------


def test_every_required_resource_is_declared():
    declared = {r["type"] for name in bicep_files() for r in resources(name).values() if not r["existing"]}
    assert declared >= {
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.Web/serverfarms",
        "Microsoft.Web/sites",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.Storage/storageAccounts/tableServices/tables",
        "Microsoft.ServiceBus/namespaces",
        "Microsoft.ServiceBus/namespaces/queues",
        "Microsoft.KeyVault/vaults",
        "Microsoft.OperationalInsights/workspaces",
        "Microsoft.Insights/components",
        "Microsoft.Authorization/roleAssignments",
        "Microsoft.Insights/actionGroups",
        "Microsoft.Insights/metricAlerts",
        "Microsoft.Insights/scheduledQueryRules",
        "Microsoft.Insights/workbooks",
    }
    identity_type = "Microsoft.ManagedIdentity/userAssignedIdentities"
    identities = [r for name in bicep_files() for r in resources(name, identity_type).values()]
    assert len(identities) == 1, "one user-assigned identity runs everything"


def test_flex_consumption_plan():
    plan = body(only("app/function-app.bicep", "Microsoft.Web/serverfarms"))
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True  # Linux


def test_function_app_on_flex_consumption_python_311():
    site = body(only("app/function-app.bicep", "Microsoft.Web/sites"))
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert accessor(props["serverFarmId"]) == ["plan", "id"]
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${blobEndpoint}${deploymentContainerName}"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert set(config["scaleAndConcurrency"]) == {"maximumInstanceCount", "instanceMemoryMB"}
    # Key Vault references resolve with the user-assigned identity.
    assert ref("app/function-app.bicep", props["keyVaultReferenceIdentity"]) == ("param", "identityId")
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    # azd finds the app to deploy by this tag (azure.yaml service `api`).
    tags = site["tags"]["function"]["parameters"]  # union(tags, {...}); pycep keeps a quoted key's quotes
    assert {"'azd-service-name'": "api"} in tags.values()


def test_storage_account_is_identity_only():
    props = body(only("core/storage/storage-account.bicep", "Microsoft.Storage/storageAccounts"))["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    container_type = "Microsoft.Storage/storageAccounts/blobServices/containers"
    containers = {c["name"]: c for c in map(body, resources("core/storage/storage-account.bicep", container_type)
                                              .values())}
    # `container`: the host's azure-webjobs-hosts and azure-webjobs-secrets, created so blob roles can be
    # scoped to them (app/rbac.bicep) rather than to the account.
    assert set(containers) == {"deploymentContainerName", "payloadContainerName", "container"}
    text = (INFRA / "core/storage/storage-account.bicep").read_text()
    assert "'azure-webjobs-hosts'" in text and "'azure-webjobs-secrets'" in text
    assert all(c["properties"]["publicAccess"] == "None" for c in containers.values())


def test_claim_check_container_is_wired_to_the_app_settings():
    settings = app_settings()
    assert ref("app/function-app.bicep", settings["PAYLOAD_BLOB_ENDPOINT"]) == ("param", "blobEndpoint")
    assert ref("app/function-app.bicep", settings["PAYLOAD_BLOB_CONTAINER"]) == ("param", "payloadContainerName")
    assert param_default(MAIN, "payloadContainerName") == APP_SETTINGS["PAYLOAD_BLOB_CONTAINER"][0]
    assert module_params("storage")["payloadContainerName"] == "payloadContainerName"
    assert module_params("functionApp")["payloadContainerName"] == "payloadContainerName"


def test_state_tables_are_the_stores_tables():
    main_tables = template(MAIN)["variables"]["stateTables"]["value"]
    assert main_tables == list(TABLES), "main.bicep stateTables must list shared/state/store.py TABLES"
    assert module_params("storage")["tableNames"] == "stateTables"
    assert module_params("storage")["tablePrefix"] == "stateTablePrefix"
    assert module_params("functionApp")["stateTablePrefix"] == "stateTablePrefix"
    tables = only("core/storage/storage-account.bicep", "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert envelope(tables)["loop_type"]["detail"]["array_name"] == "tableNames"
    # Same naming as shared/state/azure_tables.py AzureTables.table_name: prefix + table.
    assert body(tables)["name"] == "${tablePrefix}${table}"


def test_service_bus_namespace_standard_without_sas():
    namespace = body(only("core/messaging/service-bus.bicep", "Microsoft.ServiceBus/namespaces"))
    assert namespace["sku"]["name"] == "Standard"
    assert namespace["properties"]["disableLocalAuth"] is True
    assert namespace["properties"]["minimumTlsVersion"] == "1.2"


def service_bus_queues_in_code() -> set[str]:
    """queue_name=... of every binding in functions/ (read from the source: the FunctionApp indexes only once)."""
    import ast

    from tests.unit.test_app_settings import module_constants

    found = set()
    for file in [ROOT / "function_app.py", *sorted((ROOT / "functions").rglob("*.py"))]:
        tree = ast.parse(file.read_text())
        constants = module_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg not in {"queue_name", "topic_name"}:
                        continue
                    value = keyword.value
                    if isinstance(value, ast.Name):
                        assert value.id in constants, f"{file.name}: {keyword.arg}={value.id} is not a constant"
                        found.add(constants[value.id])
                    else:
                        assert isinstance(value, ast.Constant), f"{file.name}: {keyword.arg} is not a literal"
                        found.add(value.value)
    return found


def test_every_queue_the_code_uses_is_declared():
    assert service_bus_queues_in_code() == {"%APPLY_QUEUE%"}
    assert template(MAIN)["variables"]["queueNames"]["value"] == ["applyQueueName"]
    assert app_settings()["APPLY_QUEUE"] == "applyQueueName"
    assert module_params("functionApp")["applyQueueName"] == "applyQueueName"
    assert module_params("serviceBus")["queueNames"] == "queueNames"
    assert module_params("rbac")["queueNames"] == "queueNames"
    assert module_params("alerts")["queueNames"] == "queueNames"


def test_queue_properties():
    name = "core/messaging/service-bus.bicep"
    queues = only(name, "Microsoft.ServiceBus/namespaces/queues")
    assert envelope(queues)["loop_type"]["detail"]["array_name"] == "queueNames"
    props = body(queues)["properties"]
    assert props["lockDuration"] == "PT5M"
    assert ref(name, props["maxDeliveryCount"]) == ("param", "maxDeliveryCount")
    assert props["deadLetteringOnMessageExpiration"] is True
    assert props["requiresDuplicateDetection"] is True
    assert ref(name, props["duplicateDetectionHistoryTimeWindow"]) == ("param", "duplicateDetectionWindow")
    assert props["requiresSession"] is False
    # main's defaults, passed through
    assert param_default(MAIN, "maxDeliveryCount") == 10
    assert param_default(MAIN, "duplicateDetectionWindow") == "PT10M"
    assert module_params("serviceBus")["maxDeliveryCount"] == "maxDeliveryCount"
    assert module_params("serviceBus")["duplicateDetectionWindow"] == "duplicateDetectionWindow"


def test_create_only_queue_properties_are_explained():
    text = (INFRA / "core/messaging/service-bus.bicep").read_text()
    comment = text[: text.index("requiresDuplicateDetection: true")]
    assert "requiresDuplicateDetection and requiresSession are fixed when the queue is created" in comment


def test_key_vault_uses_rbac_and_keeps_deleted_secrets():
    props = body(only("core/security/key-vault.bicep", "Microsoft.KeyVault/vaults"))["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props


def test_application_insights_on_log_analytics_with_entra_auth():
    name = "core/monitor/monitoring.bicep"
    only(name, "Microsoft.OperationalInsights/workspaces")
    props = body(only(name, "Microsoft.Insights/components"))["properties"]
    assert accessor(props["WorkspaceResourceId"]) == ["logAnalytics", "id"]
    assert props["DisableLocalAuth"] is True


# -- identity and role assignments ---------------------------------------------------------------------------


def role_assignments() -> list[dict[str, Any]]:
    found = []
    for name in bicep_files():
        for symbol, resource in resources(name, "Microsoft.Authorization/roleAssignments").items():
            config = body(resource)
            role_id = config["properties"]["roleDefinitionId"]["function"]
            assert role_id["type"] == "subscription_resource_id", f"{symbol}: roleDefinitionId must be built-in"
            assert role_id["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
            guid = role_id["parameters"]["resource_name_1"]
            path = accessor(guid)
            if len(path) == 2:  # roles.x
                guid = template(name)["variables"][path[0]]["value"][path[1]]
            scope = config.get("scope")
            if isinstance(scope, dict) and scope.get("operator", {}).get("type") == "index_accessor":
                scope = scope["operator"]["operands"]["operand_1"]  # queues[i] -> queues
            found.append({
                "file": name,
                "symbol": symbol,
                "guid": guid,
                "scope": scope,
                "scope_type": resources(name).get(scope, {}).get("type") if isinstance(scope, str) else None,
                "principal": config["properties"]["principalId"],
                "principal_type": config["properties"]["principalType"],
                "condition": envelope(resource).get("condition"),
                "name": config["name"],
            })
    return found


def test_role_assignments_use_the_right_built_in_roles_on_their_own_resource():
    assignments = role_assignments()
    assert assignments
    for a in assignments:
        assert a["guid"] in ROLES, f"{a['symbol']}: {a['guid']} is not one of the expected built-in roles"
        role, scope_type = ROLES[a["guid"]]
        # Scoped to one resource declared in the file (never left to default to the resource group).
        assert isinstance(a["scope"], str) and a["scope_type"], f"{a['symbol']} ({role}) has no resource scope"
        assert a["scope_type"] == scope_type, f"{a['symbol']}: {role} scoped to {a['scope_type']}, not {scope_type}"
        # Deterministic name from scope, principal and role, so a redeployment updates rather than duplicates.
        name = a["name"]["function"]
        assert name["type"] == "guid"
        assert accessor(name["parameters"]["base_string"])[-1] == "id"
        assert a["principal"] in [name["parameters"].get("extra_string_1"), name["parameters"].get("extra_string_2")]


def test_app_identity_holds_exactly_the_least_privilege_roles():
    app = [a for a in role_assignments() if a["principal"] == "principalId"]
    assert {ROLES[a["guid"]][0] for a in app} == APP_IDENTITY_ROLES
    assert all(a["principal_type"] == "ServicePrincipal" and a["condition"] is None for a in app)
    assert len(app) == len(APP_IDENTITY_ROLES), "one assignment per role"
    assert accessor(module_params("rbac")["principalId"]) == ["identity", "outputs", "principalId"]


def test_admin_api_is_behind_entra_id_app_roles_except_health():
    auth = body(only("app/function-app.bicep", "Microsoft.Web/sites/config"))
    resource = only("app/function-app.bicep", "Microsoft.Web/sites/config")
    assert resource["config"]["condition"], "off when no admin app registration is given"
    props = auth["properties"]
    assert props["platform"]["enabled"] is True
    validation = props["globalValidation"]
    assert validation["requireAuthentication"] is True and validation["unauthenticatedClientAction"] == "Return401"
    # health (function key) and the console's static page and script, which hold no data
    assert validation["excludedPaths"] == ["/api/health", "/api/console", "/api/console.js", "/api/console.css"]
    aad = props["identityProviders"]["azureActiveDirectory"]
    assert aad["enabled"] is True and aad["registration"]["clientId"] == "adminAppClientId"
    assert module_params("functionApp")["adminAppClientId"] == "adminAppClientId"
    assert param_default(MAIN, "adminAppClientId") == ""


def test_basic_auth_publishing_credentials_are_off():
    policies = resources("app/function-app.bicep", "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert sorted(body(p)["name"] for p in policies.values()) == ["ftp", "scm"]
    assert all(body(p)["properties"]["allow"] is False for p in policies.values())


def test_every_data_resource_sends_its_logs_to_log_analytics():
    settings = resources("app/diagnostics.bicep", "Microsoft.Insights/diagnosticSettings")
    scopes = {body(s)["scope"] for s in settings.values()}
    assert scopes == {"vault", "storage", "blobService", "tableService", "namespace", "functionApp"}
    assert all(body(s)["properties"]["workspaceId"] == "logAnalyticsId" for s in settings.values())
    assert accessor(module_params("diagnostics")["logAnalyticsId"]) == ["monitoring", "outputs", "logAnalyticsId"]


def test_service_bus_roles_are_data_owner_on_each_queue_for_app_and_operator():
    service_bus = [a for a in role_assignments() if a["scope_type"] == SB_QUEUE]
    assert {(ROLES[a["guid"]][0], a["principal"]) for a in service_bus} == {
        ("Azure Service Bus Data Owner", "principalId"), ("Azure Service Bus Data Owner", "operatorPrincipalId")}
    assert all(a["scope"] == "queues" for a in service_bus), "one assignment per queue, never the namespace"


def test_operator_roles_are_optional():
    operator = [a for a in role_assignments() if a["principal"] == "operatorPrincipalId"]
    assert operator and all(a["condition"] == "withOperator" for a in operator)
    assert param_default(MAIN, "operatorPrincipalId") == ""


# -- app settings --------------------------------------------------------------------------------------------


def test_every_app_setting_the_code_reads_is_set_or_excluded_with_a_reason():
    settings = app_settings()
    missing = set(APP_SETTINGS) - set(settings) - set(EXCLUDED)
    assert not missing, f"set these in infra/app/function-app.bicep (or add to EXCLUDED with a reason): {missing}"
    both = set(EXCLUDED) & set(settings)
    assert not both, f"excluded but set anyway: {both}"
    assert set(EXCLUDED) <= set(APP_SETTINGS), f"stale EXCLUDED entries: {set(EXCLUDED) - set(APP_SETTINGS)}"


def deployed_flows_references() -> set[str]:
    """The env:NAME references in the flows file the deployment ships (the sample at the root)."""
    import yaml

    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith("env:"):
            found.add(value[4:])

    walk(yaml.safe_load((ROOT / "flows.yaml").read_text()))
    return found


def test_every_reference_in_the_deployed_flows_file_is_an_app_setting():
    references = deployed_flows_references()
    assert {"CRM_URL", "CRM_TENANT_ID", "CRM_CLIENT_ID", "AZURE_CLIENT_ID", "ERP_DB_URL"} <= references
    assert references <= set(app_settings()), f"not set in Azure: {references - set(app_settings())}"
    settings = app_settings()
    for setting, param in {"CRM_URL": "crmUrl", "CRM_TENANT_ID": "crmTenantId", "CRM_CLIENT_ID": "crmClientId"}.items():
        assert ref("app/function-app.bicep", settings[setting]) == ("param", param)
        assert module_params("functionApp")[param] == param


def test_bicep_sets_no_unknown_setting():
    settings = app_settings()
    unknown = set(settings) - set(APP_SETTINGS) - set(HOST_SETTINGS) - CONNECTOR_SECRETS - deployed_flows_references()
    assert not unknown, f"declare these in shared/settings.py, HOST_SETTINGS or CONNECTOR_SECRETS: {unknown}"
    assert not FORBIDDEN_SETTINGS & set(settings)


def test_app_setting_values():
    name = "app/function-app.bicep"
    settings = app_settings()
    assert settings["STATE_BACKEND"] == "tables"
    assert settings["BUS_BACKEND"] == "servicebus"
    assert ref(name, settings["AZURE_CLIENT_ID"]) == ("param", "identityClientId")
    assert ref(name, settings["STATE_TABLES_ENDPOINT"]) == ("param", "tableEndpoint")
    assert ref(name, settings["ServiceBusConnection__fullyQualifiedNamespace"]) == ("var", "serviceBusFqdn")
    connection_string = settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]
    assert ref(name, connection_string) == ("param", "applicationInsightsConnectionString")
    for setting, param in {
        "DUALSYNC_CONFIG": "flowsFile",
        "PULL_SCHEDULE": "pullSchedule",
        "SETTLEMENT_MODE": "settlementMode",
        "STATE_TABLE_PREFIX": "stateTablePrefix",
        "APPLY_QUEUE": "applyQueueName",
    }.items():
        assert ref(name, settings[setting]) == ("param", param), setting
    assert settings["MAX_ATTEMPTS"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "maxAttempts"}}
    }
    # identity-based host storage and trigger connection, with the user-assigned identity
    assert ref(name, settings["AzureWebJobsStorage__accountName"]) == ("param", "storageAccountName")
    for prefix in ("AzureWebJobsStorage", "ServiceBusConnection"):
        assert settings[f"{prefix}__credential"] == "managedidentity"
        assert ref(name, settings[f"{prefix}__clientId"]) == ("param", "identityClientId")
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    # main wires the values from the resources
    params = module_params("functionApp")
    assert accessor(params["identityClientId"]) == ["identity", "outputs", "clientId"]
    assert accessor(params["tableEndpoint"]) == ["storage", "outputs", "tableEndpoint"]
    assert accessor(params["serviceBusEndpoint"]) == ["serviceBus", "outputs", "endpoint"]
    assert accessor(params["applicationInsightsConnectionString"]) == [
        "monitoring", "outputs", "applicationInsightsConnectionString"
    ]


def test_connector_secrets_are_key_vault_references():
    settings = app_settings()
    for secret in CONNECTOR_SECRETS:
        assert re.fullmatch(r"@Microsoft\.KeyVault\(SecretUri=\$\{keyVaultUri\}secrets/\$\{\w+\}\)", settings[secret])
    assert accessor(module_params("functionApp")["keyVaultUri"]) == ["keyVault", "outputs", "uri"]


# -- alerts and workbook -------------------------------------------------------------------------------------


def test_action_group_emails_the_alert_parameter():
    name = "app/alerts.bicep"
    group = body(only(name, "Microsoft.Insights/actionGroups"))
    (receiver,) = group["properties"]["emailReceivers"]
    assert ref(name, receiver["emailAddress"]) == ("param", "alertEmail")
    assert module_params("alerts")["alertEmail"] == "alertEmail"


def test_dead_letter_alert_per_queue():
    name = "app/alerts.bicep"
    dead = resources(name, "Microsoft.Insights/metricAlerts")["deadLetterAlerts"]
    assert envelope(dead)["loop_type"]["detail"] == {"item_name": "queue", "array_name": "queueNames"}
    props = body(dead)["properties"]
    assert accessor(props["scopes"][0]) == ["namespace", "id"]
    (criterion,) = props["criteria"]["allOf"]
    assert criterion["metricName"] == "DeadletteredMessages"
    assert criterion["operator"] == "GreaterThan" and criterion["threshold"] == 0
    assert criterion["dimensions"] == [{"name": "EntityName", "operator": "Include", "values": ["queue"]}]
    assert accessor(props["actions"][0]["actionGroupId"]) == ["actionGroup", "id"]


def test_function_failure_alert():
    props = body(resources("app/alerts.bicep", "Microsoft.Insights/metricAlerts")["functionFailures"])["properties"]
    assert accessor(props["scopes"][0]) == ["applicationInsights", "id"]
    (criterion,) = props["criteria"]["allOf"]
    assert criterion["metricName"] == "requests/failed"
    assert criterion["operator"] == "GreaterThan" and criterion["threshold"] == 0
    assert accessor(props["actions"][0]["actionGroupId"]) == ["actionGroup", "id"]


def test_lag_alert_above_the_parameter():
    name = "app/alerts.bicep"
    props = body(resources(name, "Microsoft.Insights/scheduledQueryRules")["lagAlert"])["properties"]
    (criterion,) = props["criteria"]["allOf"]
    assert "dualsync.end_to_end_lag" in criterion["query"]
    assert criterion["operator"] == "GreaterThan"
    assert ref(name, criterion["threshold"]) == ("param", "lagAlertThresholdSeconds")
    assert criterion["dimensions"][0]["name"] == "flow"
    assert accessor(props["actions"]["actionGroups"][0]) == ["actionGroup", "id"]
    assert module_params("alerts")["lagAlertThresholdSeconds"] == "lagAlertThresholdSeconds"


@pytest.mark.parametrize(("rule", "metric", "threshold"), [
    ("pullStaleAlert", "dualsync.since_last_pull", ("param", "pullStaleAlertThresholdSeconds")),
    ("pausedFlowAlert", "dualsync.flow_paused", ("literal", 0)),
])
def test_a_stalled_or_paused_flow_alerts_per_flow(rule, metric, threshold):
    name = "app/alerts.bicep"
    props = body(resources(name, "Microsoft.Insights/scheduledQueryRules")[rule])["properties"]
    (criterion,) = props["criteria"]["allOf"]
    assert f'name == "{metric}"' in criterion["query"] and "by flow" in criterion["query"]
    assert criterion["metricMeasureColumn"] in criterion["query"]
    assert criterion["operator"] == "GreaterThan" and ref(name, criterion["threshold"]) == threshold
    assert criterion["dimensions"] == [{"name": "flow", "operator": "Include", "values": ["*"]}]
    assert accessor(props["actions"]["actionGroups"][0]) == ["actionGroup", "id"]
    assert "docs/runbook.md#" in props["description"]
    anchor = props["description"].split("docs/runbook.md#")[1].split(".")[0]
    assert f"## {anchor.replace('-', ' ')}" in (ROOT / "docs" / "runbook.md").read_text().lower()
    assert module_params("alerts")["pullStaleAlertThresholdSeconds"] == "pullStaleAlertThresholdSeconds"


def _emitted_metrics() -> set[str]:
    """What the code really emits while it syncs (its own process: a meter provider is set once per process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "tests" / "infra" / "emitted_metrics.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout))


def test_alerts_and_the_workbook_read_only_metrics_the_code_emits():
    referenced: dict[str, set[str]] = {}
    for path in [*(INFRA / "app").glob("*.bicep"), INFRA / "app" / "workbook.json", INFRA / "main.bicep"]:
        for metric in re.findall(r"dualsync\.[a-z_]+", path.read_text()):
            referenced.setdefault(metric, set()).add(path.name)
    assert {"dualsync.since_last_pull", "dualsync.flow_paused", "dualsync.end_to_end_lag"} <= set(referenced)
    emitted = _emitted_metrics()
    assert {"dualsync.since_last_pull", "dualsync.flow_paused"} <= emitted
    unknown = {metric: sorted(files) for metric, files in referenced.items() if metric not in emitted}
    assert not unknown, f"alerts or workbook read metrics the code never emits: {unknown}"
    documented = (ROOT / "docs" / "deploy.md").read_text()
    assert all(f"`{metric}`" in documented for metric in emitted), "docs/deploy.md lists the telemetry contract"


def test_workbook_shows_applied_failed_lag_per_flow_and_dead_letters_by_reason():
    name = "app/workbook.bicep"
    props = body(only(name, "Microsoft.Insights/workbooks"))["properties"]
    replace = props["serializedData"]["function"]
    assert replace["type"] == "replace"
    assert replace["parameters"]["original_string"]["function"]["parameters"]["file_path"] == "workbook.json"
    placeholder = replace["parameters"]["old_string"]
    workbook = json.loads((INFRA / "app" / "workbook.json").read_text())
    queries = {item["name"]: item["content"]["query"] for item in workbook["items"] if item["type"] == 3}
    assert all(
        item["content"]["crossComponentResources"] == [placeholder] for item in workbook["items"] if item["type"] == 3
    )
    per_flow = queries["per-flow"]
    for metric in ("dualsync.applied", "dualsync.dead_lettered", "dualsync.end_to_end_lag"):
        assert metric in per_flow
    assert "by flow" in per_flow
    assert "by reason" in queries["dead-letters-by-reason"]


# -- azd -----------------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_this_directory_as_the_function_app():
    import yaml

    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert azure["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert azure["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}


def _shipped(path: str) -> bool:
    """Whether .funcignore lets `path` into the package, read as gitignore rules (last match wins, `!` lets back
    in) the way Core Tools and azd read it."""
    import fnmatch

    shipped = True
    for raw in (ROOT / ".funcignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatch(part, tail) for part in parts) or fnmatch.fnmatch(parts[-1], tail)
        elif "/" in pattern:
            hit = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(part, pattern) for part in parts)
        if hit:
            shipped = negate
    return shipped


def test_funcignore_ships_the_app_and_nothing_else():
    for needed in ("function_app.py", "host.json", "requirements.txt", "flows.yaml", "shared/engine/apply.py",
                   "functions/apply.py", "shared/state/store.py"):
        assert _shipped(needed), needed
    for dropped in (".env", "secrets.pem", "state.sqlite", ".vscode/settings.json", ".venv/lib/x.py",
                    "node_modules/azurite/a.js", "tests/unit/test_apply.py", "infra/main.bicep", "dvsim/api.py",
                    "shared/__pycache__/apply.cpython-311.pyc", "shared/.env", "functions/cert.pem",
                    "local.settings.json", ".dualsync/state.db", "bench/initial_sync.py", "Makefile"):
        assert not _shipped(dropped), dropped
