// The function app's storage account: host storage (AzureWebJobsStorage, identity-based), the Flex
// Consumption deployment container, the claim-check container (bodies of messages too large for Service Bus),
// and the sync state tables. Shared-key access is disabled, so only
// Entra ID (the managed identity's roles in app/rbac.bicep) can reach the data.
param name string
param location string
param tags object = {}

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Redundancy of the account (host storage, deployment package, sync state).')
param skuName string = 'Standard_LRS'

@description('Blob container the Flex Consumption app is deployed from.')
param deploymentContainerName string

@description('Blob container for the bodies of messages too large for Service Bus (app setting PAYLOAD_BLOB_CONTAINER).')
param payloadContainerName string

@description('Prefix of the state table names (app setting STATE_TABLE_PREFIX).')
param tablePrefix string

@description('State table names without the prefix (shared/state/store.py TABLES).')
param tableNames array

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Child resources are declared top-level with `parent:` (not nested), which every Bicep parser reads alike.
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The Functions host's containers, created here so the identity's blob roles can be scoped to them (app/rbac.bicep).
resource hostContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

// Bodies of messages sent by reference; each is deleted once its message is settled for good.
resource payloadContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: payloadContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// The code also creates a missing table on first use; declaring them here makes the state visible and lets a
// deployment fail early on a bad prefix.
resource stateTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: '${tablePrefix}${table}'
}]

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output tableEndpoint string = storage.properties.primaryEndpoints.table
