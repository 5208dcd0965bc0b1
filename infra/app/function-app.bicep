// The function app on Flex Consumption (Linux, Python 3.11), running as the user-assigned identity.
//
// App settings: every setting the code reads (shared/settings.py APP_SETTINGS) is set here, except the ones
// that must not exist in Azure (connection-string alternatives and the embedded runtime's SQLite paths);
// tests/infra/test_bicep_structure.py holds that list with the reason for each. Flex Consumption manages the
// runtime itself: FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and WEBSITE_RUN_FROM_PACKAGE are not
// allowed as app settings (functionAppConfig.runtime replaces them).
param name string
param planName string
param location string
param tags object = {}

@description('Resource id of the user-assigned managed identity.')
param identityId string
@description('Client id of the user-assigned managed identity.')
param identityClientId string

param storageAccountName string
@description('https://<account>.blob.core.windows.net/')
param blobEndpoint string
@description('https://<account>.table.core.windows.net/')
param tableEndpoint string
param deploymentContainerName string

@description('https://<namespace>.servicebus.windows.net:443/')
param serviceBusEndpoint string

@description('https://<vault>.vault.azure.net/')
param keyVaultUri string

param applicationInsightsConnectionString string

param maximumInstanceCount int = 100
param instanceMemoryMB int = 2048

param flowsFile string
param pullSchedule string
param settlementMode string
param maxAttempts int
param stateTablePrefix string
param applyQueueName string
param crmClientSecretName string
param erpDbUrlSecretName string

// <namespace>.servicebus.windows.net, in whatever cloud the namespace lives.
var serviceBusFqdn = replace(replace(serviceBusEndpoint, 'https://', ''), ':443/', '')

resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2023-12-01' = {
  name: name
  location: location
  // azd deploys the `api` service of azure.yaml to the app carrying this tag.
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references in the app settings are resolved with the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2023-12-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    // ---- read by the Functions host and the platform --------------------------------------------------
    // Identity-based host storage: no connection string, the account has shared-key access disabled.
    AzureWebJobsStorage__accountName: storageAccountName
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // The apply trigger's connection (connection="ServiceBusConnection"), identity-based.
    ServiceBusConnection__credential: 'managedidentity'
    ServiceBusConnection__clientId: identityClientId
    // Entra ID-authenticated telemetry (Application Insights has local auth disabled).
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'

    // ---- read by dualsync (shared/settings.py APP_SETTINGS) -------------------------------------------
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
    AZURE_CLIENT_ID: identityClientId
    DUALSYNC_CONFIG: flowsFile
    PULL_SCHEDULE: pullSchedule
    SETTLEMENT_MODE: settlementMode
    MAX_ATTEMPTS: string(maxAttempts)
    STATE_BACKEND: 'tables'
    STATE_TABLES_ENDPOINT: tableEndpoint
    STATE_TABLE_PREFIX: stateTablePrefix
    BUS_BACKEND: 'servicebus'
    APPLY_QUEUE: applyQueueName
    // Also read by the host for the trigger (with __credential and __clientId above).
    ServiceBusConnection__fullyQualifiedNamespace: serviceBusFqdn

    // ---- connector secrets: Key Vault references, referenced from flows.yaml as env:NAME ----------------
    // Versionless: the app picks up a new secret version within a day, or at once on restart.
    CRM_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${crmClientSecretName})'
    ERP_DB_URL: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${erpDbUrlSecretName})'
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
