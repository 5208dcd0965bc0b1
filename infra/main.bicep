// dualsync on Azure: one resource group, deployed with one command.
//
//   az deployment group create -g <resource-group> -f infra/main.bicep -p alertEmail=ops@contoso.com \
//     crmUrl=https://contoso.crm4.dynamics.com crmClientId=<app registration client id>
//
// or `azd up` (azure.yaml at the repo root; infra/main.parameters.json maps azd's environment onto these
// parameters). See docs/deploy.md for the steps after the deployment.
//
// Identity: one user-assigned managed identity runs everything (host storage, deployment package, state
// tables, Service Bus, Key Vault references, telemetry). No connection strings or keys anywhere: Service Bus
// local (SAS) auth and storage shared-key access are disabled.
targetScope = 'resourceGroup'

// ---- naming ----------------------------------------------------------------------------------------
@minLength(1)
@maxLength(20)
@description('Short name of this environment (dev, prod, ...); part of every resource name and the azd-env-name tag.')
param environmentName string = 'dualsync'

@description('Region of every resource. Flex Consumption is available in a subset of regions: az functionapp list-flexconsumption-locations.')
param location string = resourceGroup().location

// ---- alerts ----------------------------------------------------------------------------------------
@description('Email address that receives the alerts (dead letters, function failures, end-to-end lag).')
param alertEmail string

@minValue(60)
@description('Alert when the end-to-end lag of any flow (source change -> applied to the target) exceeds this many seconds.')
param lagAlertThresholdSeconds int = 900

@minValue(300)
@description('Alert when a flow (not paused) has not pulled successfully for this many seconds. Must exceed the longest flow schedule interval.')
param pullStaleAlertThresholdSeconds int = 1800

// ---- the function app ------------------------------------------------------------------------------
@description('App setting DUALSYNC_CONFIG: path of the flows file inside the deployed package.')
param flowsFile string = 'flows.yaml'

@description('App setting PULL_SCHEDULE: NCRONTAB schedule of the pull timer (each flow also has its own schedule).')
param pullSchedule string = '0 */5 * * * *'

@allowed([
  'extension'
  'ledger'
])
@description('App setting SETTLEMENT_MODE: how the apply trigger dead-letters (see README).')
param settlementMode string = 'extension'

@minValue(1)
@description('App setting MAX_ATTEMPTS: default apply attempts before a message is dead-lettered as RetriesExhausted.')
param maxAttempts int = 8

@description('Upper bound of Flex Consumption instances. With host.json maxConcurrentCalls this bounds the load on the ERP.')
param maximumInstanceCount int = 100

@allowed([
  2048
  4096
])
@description('Memory of each Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

// ---- state and messaging ---------------------------------------------------------------------------
@minLength(1)
@maxLength(20)
@description('App setting STATE_TABLE_PREFIX: the state tables are named <prefix><table>, e.g. dualsynccursors.')
param stateTablePrefix string = 'dualsync'

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Redundancy of the storage account that holds the sync state (cursors, key map). LRS: a lost state means a full resync.')
param storageSkuName string = 'Standard_LRS'

@description('App setting APPLY_QUEUE: the queue that carries ChangeMessages.')
param applyQueueName string = 'dualsync-changes'

@minLength(3)
@maxLength(63)
@description('App setting PAYLOAD_BLOB_CONTAINER: holds the bodies of messages too large for Service Bus (claim check).')
param payloadContainerName string = 'dualsync-payloads'

@minValue(1)
@description('Deliveries of one message before Service Bus dead-letters it (MaxDeliveryCountExceeded). Retries travel as clones, so this only counts crashes and lost locks.')
param maxDeliveryCount int = 10

@description('Duplicate detection window (ISO 8601): re-sends with the same message_id inside it are dropped.')
param duplicateDetectionWindow string = 'PT10M'

@description('Time to live of a message (ISO 8601); an expired message is dead-lettered, never lost.')
param messageTimeToLive string = 'P14D'

// ---- connector secrets -----------------------------------------------------------------------------
@description('Key Vault secret behind app setting CRM_CLIENT_SECRET (flows.yaml: client_secret: env:CRM_CLIENT_SECRET).')
param crmClientSecretName string = 'crm-client-secret'

@description('Key Vault secret behind app setting ERP_DB_URL (flows.yaml: url: env:ERP_DB_URL).')
param erpDbUrlSecretName string = 'erp-db-url'

// ---- the CRM (app settings the deployed flows.yaml refers to as env:NAME) -----------------------------
@description('App setting CRM_URL: the Dataverse organization URL, e.g. https://contoso.crm4.dynamics.com (flows.yaml: url: env:CRM_URL).')
param crmUrl string

@description('App setting CRM_CLIENT_ID: client id of the app registration dualsync signs in to Dataverse as (flows.yaml: client_id: env:CRM_CLIENT_ID).')
param crmClientId string

@description('App setting CRM_TENANT_ID: tenant of that app registration (flows.yaml: tenant_id: env:CRM_TENANT_ID).')
param crmTenantId string = tenant().tenantId

// ---- operators -------------------------------------------------------------------------------------
@description('Optional object id of an operator (user or group) who puts secrets into Key Vault and runs `dualsync status` / `dualsync replay` against Azure. Empty: no operator roles.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@maxLength(6)
@description('Appended to the Key Vault name. A deleted vault keeps its name for 90 days (purge protection), so a deployment after `azd down` needs a new one: the azd postdown hook (scripts/azd/postdown.sh) sets DUALSYNC_VAULT_SUFFIX to a fresh value. Empty: kv-<token>.')
param keyVaultSuffix string = ''

@description('Client id of the Entra ID app registration that guards the admin API (app roles Reader and Operator, see docs/deploy.md). Empty: the admin API answers only /api/health (function key); use the CLI.')
param adminAppClientId string = ''

// ---- derived -----------------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
  application: 'dualsync'
}
var functionAppName = 'func-${environmentName}-${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var keyVaultName = empty(keyVaultSuffix) ? 'kv-${resourceToken}' : 'kv-${resourceToken}-${toLower(keyVaultSuffix)}'

// One table per name in shared/state/store.py TABLES (tests/infra checks the two lists agree).
var stateTables = [
  'cursors'
  'keymap'
  'records'
  'runs'
  'failures'
  'conflicts'
  'changerequests'
  'grants'
  'jobs'
]

// Every queue the code uses (the APPLY_QUEUE setting).
var queueNames = [
  applyQueueName
]

module identity 'core/identity/user-assigned-identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${environmentName}-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'core/monitor/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${environmentName}-${resourceToken}'
    applicationInsightsName: 'appi-${environmentName}-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage/storage-account.bicep' = {
  name: 'storage'
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
    payloadContainerName: payloadContainerName
    tablePrefix: stateTablePrefix
    tableNames: stateTables
  }
}

module serviceBus 'core/messaging/service-bus.bicep' = {
  name: 'serviceBus'
  params: {
    name: 'sb-${environmentName}-${resourceToken}'
    location: location
    tags: tags
    queueNames: queueNames
    maxDeliveryCount: maxDeliveryCount
    duplicateDetectionWindow: duplicateDetectionWindow
    messageTimeToLive: messageTimeToLive
  }
}

module keyVault 'core/security/key-vault.bicep' = {
  name: 'keyVault'
  params: {
    name: keyVaultName
    location: location
    tags: tags
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    queueNames: queueNames
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    deploymentContainerName: deploymentContainerName
    payloadContainerName: payloadContainerName
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module functionApp 'app/function-app.bicep' = {
  name: 'functionApp'
  // The host must be able to reach storage, Service Bus and Key Vault when it first starts.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: 'plan-${environmentName}-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: deploymentContainerName
    payloadContainerName: payloadContainerName
    serviceBusEndpoint: serviceBus.outputs.endpoint
    keyVaultUri: keyVault.outputs.uri
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    flowsFile: flowsFile
    pullSchedule: pullSchedule
    settlementMode: settlementMode
    maxAttempts: maxAttempts
    stateTablePrefix: stateTablePrefix
    applyQueueName: applyQueueName
    crmClientSecretName: crmClientSecretName
    erpDbUrlSecretName: erpDbUrlSecretName
    crmUrl: crmUrl
    crmClientId: crmClientId
    crmTenantId: crmTenantId
    adminAppClientId: adminAppClientId
  }
}

module diagnostics 'app/diagnostics.bicep' = {
  name: 'diagnostics'
  params: {
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    functionAppName: functionApp.outputs.name
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  params: {
    namePrefix: '${environmentName}-${resourceToken}'
    tags: tags
    alertEmail: alertEmail
    serviceBusNamespaceName: serviceBus.outputs.name
    queueNames: queueNames
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    location: location
    lagAlertThresholdSeconds: lagAlertThresholdSeconds
    pullStaleAlertThresholdSeconds: pullStaleAlertThresholdSeconds
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  params: {
    displayName: 'dualsync (${environmentName})'
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output FUNCTION_APP_NAME string = functionApp.outputs.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
// The subject of a federated credential that lets the app sign in to Dataverse as an app registration.
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output SERVICE_BUS_NAMESPACE string = serviceBus.outputs.name
output APPLY_QUEUE string = applyQueueName
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STATE_TABLES_ENDPOINT string = storage.outputs.tableEndpoint
output KEY_VAULT_NAME string = keyVault.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
