// Key Vault for connector secrets (CRM client secret, ERP connection URL, ...). RBAC authorization only:
// the function app's identity reads secrets (Key Vault Secrets User), an operator writes them (Key Vault
// Secrets Officer, app/rbac.bicep). The template never holds a secret value: they are set after deployment
// (docs/deploy.md) and reach the app as Key Vault references in its app settings.
param name string
param location string
param tags object = {}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

output id string = vault.id
output name string = vault.name
@description('https://<vault>.vault.azure.net/')
output uri string = vault.properties.vaultUri
