// Azure Monitor workbook over Application Insights: per flow applied / failed / lag, dead letters by reason.
// The queries are in workbook.json; they read the metrics of the telemetry contract in docs/deploy.md.
param displayName string
param location string
param tags object = {}
param applicationInsightsName string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; stable per resource group and Application Insights component.
  name: guid(resourceGroup().id, applicationInsights.id, 'dualsync-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsights.id
    serializedData: replace(loadTextContent('workbook.json'), '__APPLICATION_INSIGHTS_ID__', applicationInsights.id)
  }
}

output id string = workbook.id
