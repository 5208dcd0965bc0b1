# azd prepackage hook on Windows: the same as prepackage.sh (validate the flows file that is packaged).
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '../..')  # the project root, wherever azd starts the hook
$flows = if ($env:DUALSYNC_FLOWS_FILE) { $env:DUALSYNC_FLOWS_FILE } else { 'flows.yaml' }
$python = if ($env:DUALSYNC_PYTHON) { $env:DUALSYNC_PYTHON } elseif (Test-Path '.venv/Scripts/python.exe') { '.venv/Scripts/python.exe' } else { 'python' }
if (-not (Test-Path $flows)) {
  Write-Error "prepackage: flows file '$flows' not found (set DUALSYNC_FLOWS_FILE, or put flows.yaml at the project root)"
}
& $python -m shared.cli validate $flows
if ($LASTEXITCODE -ne 0) { Write-Error "prepackage: '$flows' is not valid; nothing was packaged" }
if ((Resolve-Path $flows).Path -ne (Join-Path (Get-Location) 'flows.yaml')) {
  Copy-Item $flows flows.yaml -Force
  Write-Output "prepackage: packaging $flows as flows.yaml"
}
