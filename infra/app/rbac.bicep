// Least-privilege role assignments, each scoped to the one resource it is about (never the resource group).
// Role definition ids are Azure built-in roles (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
param principalId string
param storageAccountName string
param serviceBusNamespaceName string
param queueNames array
param keyVaultName string
param applicationInsightsName string

@description('Optional operator (user or group): writes connector secrets, runs `dualsync status` / `dualsync replay`.')
param operatorPrincipalId string = ''
param operatorPrincipalType string = 'User'

var roles = {
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419' // Azure Service Bus Data Owner
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // Key Vault Secrets Officer
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}
var withOperator = !empty(operatorPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = [for queue in queueNames: {
  parent: namespace
  name: queue
}]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// ---- the function app's identity ---------------------------------------------------------------------

// Data Owner on each queue (never the namespace): pull sends ChangeMessages; apply receives, settles and sends
// retry clones; replay reads the dead-letter sub-queue; and the Manage right that Data Sender + Receiver lack lets
// `dualsync status` / GET /api/flows read the queue's counts and the Functions scale controller read its length
// for target-based scaling (without it the scale controller logs "does not have Manage claim" and scales blind).
resource appServiceBusOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (queue, i) in queueNames: {
  name: guid(queues[i].id, principalId, roles.serviceBusDataOwner)
  scope: queues[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

// AzureWebJobsStorage (host keys, timer and singleton locks), the Flex Consumption deployment package, and the
// claim-check container (bodies of messages too large for Service Bus: write, read, delete). Owner includes
// everything Storage Blob Data Contributor grants, so the claim check needs no assignment of its own.
resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The state tables (cursors, key map, record state, runs, failures). Account scope, because the code creates
// a missing table on first use, which is an account-level operation.
resource appTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references in the app settings are resolved with this identity (keyVaultReferenceIdentity).
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Entra ID-authenticated telemetry (the component has local auth disabled).
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// ---- the optional operator ---------------------------------------------------------------------------

resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withOperator) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// Replay and Service Bus Explorer (send, receive, peek the dead-letter queue) and the queue counts in
// `dualsync status` (Manage), on each queue only.
resource operatorServiceBusOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (queue, i) in queueNames: if (withOperator) {
  name: guid(queues[i].id, operatorPrincipalId, roles.serviceBusDataOwner)
  scope: queues[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}]

resource operatorTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withOperator) {
  name: guid(storage.id, operatorPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}
