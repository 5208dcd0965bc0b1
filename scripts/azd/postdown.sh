#!/bin/sh
# azd postdown hook (azure.yaml): `azd down` deleted the resource group, and the Key Vault with it; purge
# protection keeps the deleted vault (and its name) for 90 days, and `azd down --purge` cannot purge it. The next
# `azd up` of this environment must therefore create a vault with another name: pick a fresh suffix
# (main.parameters.json maps DUALSYNC_VAULT_SUFFIX to keyVaultSuffix). The old vault can still be recovered,
# secrets included, with `az keyvault recover --name <old name>` within those 90 days.
set -eu
suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
azd env set DUALSYNC_VAULT_SUFFIX "$suffix"
echo "postdown: the next azd up creates Key Vault kv-<token>-$suffix (the deleted one keeps its name for 90 days)"
