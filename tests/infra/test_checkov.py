"""checkov over infra/*.bicep: every template parsed, and no failed check except the accepted ones below.

checkov exits 0 when it cannot parse a template (it only counts it in the report), so these tests read the
report rather than trusting the exit code. Inline `#checkov:skip` comments are not used: the ACCEPTED dict below
is the one place a failed check can be let through, each with its reason.
"""

from __future__ import annotations

import re
from typing import Any

from tests.infra.conftest import INFRA, ROOT, bicep_files, template

# (check id, resource as checkov names it) -> why it is accepted for this deployment.
ACCEPTED: dict[tuple[str, str], str] = {
    ("CKV_AZURE_35", "Microsoft.Storage/storageAccounts.storage"): (
        "Default network action Allow: the Flex Consumption app has no VNet integration in this template, so it "
        "reaches its host storage and state tables over the public endpoint. Access needs Entra ID: shared-key "
        "access is disabled and only the app identity (and the optional operator) hold data roles."
    ),
    ("CKV_AZURE_59", "Microsoft.Storage/storageAccounts.storage"): (
        "Public network access Enabled, for the same reason as CKV_AZURE_35 (no VNet, no private endpoints yet); "
        "blob public (anonymous) access is disabled."
    ),
    ("CKV_AZURE_206", "Microsoft.Storage/storageAccounts.storage"): (
        "Standard_LRS by default (storageSkuName offers ZRS, GRS, GZRS): the sync state can be rebuilt by a full "
        "resync, and a region loss stops the single-region function app anyway. Geo-replication is the operator's "
        "cost choice."
    ),
    ("CKV_AZURE_109", "Microsoft.KeyVault/vaults.vault"): (
        "Key Vault firewall default Allow: App Service resolves Key Vault references over the vault's public "
        "endpoint unless the app has VNet integration. Authorization is RBAC only (Key Vault Secrets User for the "
        "app identity); purge protection and soft delete are on."
    ),
    ("CKV_AZURE_189", "Microsoft.KeyVault/vaults.vault"): (
        "Public network access on the vault, for the same reason as CKV_AZURE_109."
    ),
    ("CKV_AZURE_222", "Microsoft.Web/sites.functionApp"): (
        "Public network access on the function app: the triggers need no inbound traffic, but the admin HTTP "
        "function (function-key auth) is called from operators' machines. Restrict it with access restrictions or "
        "a private endpoint once a VNet exists."
    ),
    ("CKV_AZURE_17", "Microsoft.Web/sites.functionApp"): (
        "No incoming client certificates: the only HTTP endpoint is the admin function, protected by function "
        "keys; mutual TLS is not part of the operator workflow."
    ),
    ("CKV_AZURE_78", "Microsoft.Web/sites.functionApp"): (
        "ftpsState: a Linux Flex Consumption app has no FTP/FTPS deployment (FTPS is Windows-only there); code "
        "is deployed only from the functionAppConfig.deployment blob container."
    ),
    ("CKV_AZURE_212", "Microsoft.Web/sites.functionApp"): (
        "No always-ready instances: Flex Consumption scales from zero per trigger. A lost instance's Service Bus "
        "messages are redelivered when their lock expires and the next timer run pulls again; always-ready "
        "instances would bill around the clock."
    ),
    ("CKV_AZURE_213", "Microsoft.Web/sites.functionApp"): (
        "No health check path: the app is trigger-driven with no health endpoint; liveness is watched by the "
        "function-failure, dead-letter and end-to-end lag alerts."
    ),
    ("CKV_AZURE_225", "Microsoft.Web/serverfarms.plan"): (
        "Plan not zone-redundant: a zone outage delays the sync (messages wait in Service Bus, cursors resume "
        "where they were), it loses nothing. Zone redundancy is left to the operator as a cost choice."
    ),
    # checkov reads the authsettingsV2 child (Microsoft.Web/sites/config) as if it were a whole web app and runs
    # the site checks on it; the site's own checks run on functionApp above.
    **{(check, "Microsoft.Web/sites/config.adminAuth"): (
        "a site check applied to the authsettingsV2 child resource, which has none of those properties"
    ) for check in ("CKV_AZURE_13", "CKV_AZURE_63", "CKV_AZURE_65", "CKV_AZURE_66", "CKV_AZURE_80", "CKV_AZURE_88",
                    "CKV_AZURE_222")},
}


def failed(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])}


def test_checkov_is_the_pinned_version(checkov_report):
    pinned = re.search(r"^checkov==(\S+)", (ROOT / "requirements-checkov.txt").read_text(), re.MULTILINE)
    assert pinned, "requirements-checkov.txt must pin checkov==X"
    assert checkov_report["summary"]["checkov_version"] == pinned.group(1)


def test_checkov_parsed_every_template(checkov_report):
    summary = checkov_report["summary"]
    errors = checkov_report["results"].get("parsing_errors", [])
    assert summary["parsing_errors"] == 0 and not errors, f"checkov could not parse: {errors}"
    # Parsed, and not just an empty scan: checkov saw every resource pycep sees.
    declared = sum(len(template(name).get("resources", {})) for name in bicep_files())
    assert declared > 0
    assert summary["resource_count"] >= declared, (summary["resource_count"], declared)
    checked_files = {c["file_path"].lstrip("/") for kind in ("passed_checks", "failed_checks")
                     for c in checkov_report["results"].get(kind, [])}
    for name in ("app/function-app.bicep", "core/storage/storage-account.bicep", "core/security/key-vault.bicep"):
        assert name in checked_files, f"checkov ran no check on {name}"
    assert (INFRA / "main.bicep").exists()


def test_no_failed_checks_except_accepted(checkov_report):
    unexpected = failed(checkov_report) - set(ACCEPTED)
    details = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in checkov_report["results"]["failed_checks"]
        if (c["check_id"], c["resource"]) in unexpected
    ]
    assert not unexpected, "checkov failed checks (fix them, or add them to ACCEPTED with a reason):\n" + "\n".join(
        details
    )


def test_accepted_checks_still_fail_and_have_reasons(checkov_report):
    stale = set(ACCEPTED) - failed(checkov_report)
    assert not stale, f"these checks pass now; remove them from ACCEPTED: {sorted(stale)}"
    assert all(len(reason) > 40 for reason in ACCEPTED.values())


def test_no_inline_skips(checkov_report):
    skipped = checkov_report["results"].get("skipped_checks", [])
    assert not skipped, f"use ACCEPTED (with a reason), not #checkov:skip: {[c['check_id'] for c in skipped]}"
