# azd postdown hook on Windows: the same as postdown.sh (a fresh Key Vault name for the next azd up).
$ErrorActionPreference = 'Stop'
$suffix = -join ((1..6) | ForEach-Object { '{0:x}' -f (Get-Random -Maximum 16) })
azd env set DUALSYNC_VAULT_SUFFIX $suffix
Write-Output "postdown: the next azd up creates Key Vault kv-<token>-$suffix (the deleted one keeps its name for 90 days)"
