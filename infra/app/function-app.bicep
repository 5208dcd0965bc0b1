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
@description('Blob container for the bodies of messages too large for Service Bus (the claim check).')
param payloadContainerName string

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
@description('Dataverse organization URL, tenant and app registration: the deployed flows.yaml refers to them as env:CRM_URL, env:CRM_TENANT_ID, env:CRM_CLIENT_ID.')
param crmUrl string
param crmTenantId string
param crmClientId string

@description('Client id of the Entra ID app registration of the admin API (app roles Reader and Operator). Empty: no App Service authentication, and the admin API answers only /api/health.')
param adminAppClientId string = ''

// <namespace>.servicebus.windows.net, in whatever cloud the namespace lives.
var serviceBusFqdn = replace(replace(serviceBusEndpoint, 'https://', ''), ':443/', '')

var appSettings = [
  // ---- read by the Functions host and the platform --------------------------------------------------
  // Identity-based host storage: no connection string, the account has shared-key access disabled.
  {
    name: 'AzureWebJobsStorage__accountName'
    value: storageAccountName
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  // The apply trigger's connection (connection="ServiceBusConnection"), identity-based.
  {
    name: 'ServiceBusConnection__credential'
    value: 'managedidentity'
  }
  {
    name: 'ServiceBusConnection__clientId'
    value: identityClientId
  }
  // Entra ID-authenticated telemetry (Application Insights has local auth disabled).
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }

  // ---- read by dualsync (shared/settings.py APP_SETTINGS) -------------------------------------------
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    // The Python worker configures Azure Monitor (configure_azure_monitor) and exports our logs and metrics; the
    // app then configures none itself (shared/telemetry.py), and with host.json telemetryMode OpenTelemetry the
    // host stops forwarding worker logs: every line reaches Application Insights once.
    name: 'PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY'
    value: 'true'
  }
  {
    // The logger the worker collects: ours only. The default (root) would also export the SDKs' logs, the
    // exporter's own included, which then log their own export.
    name: 'PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME'
    value: 'dualsync'
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'DUALSYNC_CONFIG'
    value: flowsFile
  }
  {
    name: 'PULL_SCHEDULE'
    value: pullSchedule
  }
  {
    name: 'SETTLEMENT_MODE'
    value: settlementMode
  }
  {
    name: 'MAX_ATTEMPTS'
    value: string(maxAttempts)
  }
  {
    name: 'STATE_BACKEND'
    value: 'tables'
  }
  {
    name: 'STATE_TABLES_ENDPOINT'
    value: tableEndpoint
  }
  {
    name: 'STATE_TABLE_PREFIX'
    value: stateTablePrefix
  }
  {
    name: 'BUS_BACKEND'
    value: 'servicebus'
  }
  // A message too large for Service Bus travels by reference: its body waits in this container.
  {
    name: 'PAYLOAD_BLOB_ENDPOINT'
    value: blobEndpoint
  }
  {
    name: 'PAYLOAD_BLOB_CONTAINER'
    value: payloadContainerName
  }
  {
    name: 'APPLY_QUEUE'
    value: applyQueueName
  }
  // Also read by the host for the trigger (with __credential and __clientId above).
  {
    name: 'ServiceBusConnection__fullyQualifiedNamespace'
    value: serviceBusFqdn
  }

  // ---- connector secrets: Key Vault references, referenced from flows.yaml as env:NAME ----------------
  // Versionless: the app picks up a new secret version within a day, or at once on restart.
  {
    name: 'CRM_CLIENT_SECRET'
    value: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${crmClientSecretName})'
  }
  {
    name: 'ERP_DB_URL'
    value: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${erpDbUrlSecretName})'
  }

  // ---- where the CRM is: not secrets, referenced from flows.yaml as env:NAME --------------------------
  {
    name: 'CRM_URL'
    value: crmUrl
  }
  {
    name: 'CRM_TENANT_ID'
    value: crmTenantId
  }
  {
    name: 'CRM_CLIENT_ID'
    value: crmClientId
  }
]

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
      appSettings: appSettings
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

// Deployments go through Entra ID (azd / Core Tools with the deployer's identity): the basic-auth publishing
// credentials of SCM and FTP are switched off.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

// App Service authentication (Entra ID) in front of the admin API: the platform validates the caller's token and
// passes its app roles on in X-MS-CLIENT-PRINCIPAL, which shared/admin_access.py checks per route. Only
// /api/health stays on a function key. Triggers other than HTTP are not affected.
resource adminAuth 'Microsoft.Web/sites/config@2023-12-01' = if (!empty(adminAppClientId)) {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      // The console's page and script hold no data: served before sign-in, they offer the sign-in link
      // (/.auth/login/aad), and every API call they make then carries the browser's App Service session.
      excludedPaths: [
        '/api/health'
        '/api/console'
        '/api/console.js'
        '/api/console.css'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: adminAppClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${adminAppClientId}'
            adminAppClientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
