// Alerts, all sent to one action group (email):
//   * dead-lettered messages > 0, one rule per queue (Service Bus platform metric, split by EntityName);
//   * function failures (Application Insights failed requests = failed invocations);
//   * end-to-end lag above a threshold (log alert on the dualsync.end_to_end_lag metric the app emits,
//     per flow; the telemetry contract is in docs/deploy.md).
param namePrefix string
param location string
param tags object = {}
param alertEmail string
param serviceBusNamespaceName string
param queueNames array
param applicationInsightsName string

@minValue(60)
param lagAlertThresholdSeconds int = 900

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${namePrefix}'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'dualsync'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// Fires while a queue's dead-letter queue holds anything; resolves itself once it is empty again (after a
// replay or a purge). Stateful, so one email per incident, not one per message.
resource deadLetterAlerts 'Microsoft.Insights/metricAlerts@2018-03-01' = [for queue in queueNames: {
  name: 'dead-letters-${queue}-${namePrefix}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages in the dead-letter queue of ${queue}. Find them in Service Bus Explorer (Dead-letter tab) or with `dualsync status`; fix the cause, then `dualsync replay`.'
    severity: 2
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'DeadletteredMessages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queue
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}]

// A failed invocation is one the function let raise: a crash, or (SETTLEMENT_MODE=ledger) a message on its way
// to the dead-letter queue. Outcomes the app settles itself (dead-letter with a reason, retry) are not failures.
resource functionFailures 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'function-failures-${namePrefix}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Function invocations failed. Application Insights > Failures shows the exceptions by function.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'FailedRequests'
          metricNamespace: 'microsoft.insights/components'
          metricName: 'requests/failed'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Count'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// End-to-end lag = when the change was applied to the target minus when it changed in the source, per flow.
resource lagAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'end-to-end-lag-${namePrefix}'
  location: location
  tags: tags
  properties: {
    displayName: 'dualsync end-to-end lag above ${lagAlertThresholdSeconds}s'
    description: 'A flow applies changes more than ${lagAlertThresholdSeconds} seconds after they happened in the source. `dualsync status` shows the lag, backlog and scheduled retries per flow.'
    severity: 3
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "dualsync.end_to_end_lag" | extend flow = tostring(customDimensions["flow"]) | summarize lag_seconds = max(valueMax) by flow'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'lag_seconds'
          dimensions: [
            {
              name: 'flow'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: lagAlertThresholdSeconds
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
