// Alerts, all sent to one action group (email):
//   * dead-lettered messages > 0, one rule per queue (Service Bus platform metric, split by EntityName);
//   * function failures (Application Insights failed requests = failed invocations);
//   * end-to-end lag above a threshold (log alert on the dualsync.end_to_end_lag metric the app emits,
//     per flow; the telemetry contract is in docs/deploy.md);
//   * a flow whose last successful pull is older than a threshold (dualsync.since_last_pull), and a paused flow
//     (dualsync.flow_paused): lag is measured only on applied changes, so a flow that stopped pulling would
//     otherwise be silent. tests/infra checks every metric named here is one the code emits.
// The runbook for each alert is in docs/runbook.md.
param namePrefix string
param location string
param tags object = {}
param alertEmail string
param serviceBusNamespaceName string
param queueNames array
param applicationInsightsName string

@minValue(60)
param lagAlertThresholdSeconds int = 900

@minValue(300)
param pullStaleAlertThresholdSeconds int = 1800

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
    description: 'Messages in the dead-letter queue of ${queue}. Runbook: docs/runbook.md#dead-letters-rising. Find them in Service Bus Explorer (Dead-letter tab) or with `dualsync status`; fix the cause, then `dualsync replay`.'
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

// The app reports, every minute and per flow, the seconds since the flow's last successful pull (paused flows
// excepted: the next rule covers them). It grows while the pull fails (an expired secret, a dropped table) or
// never runs (the timer is broken). The threshold must exceed the longest `schedule` interval in flows.yaml.
resource pullStaleAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'pull-failing-${namePrefix}'
  location: location
  tags: tags
  properties: {
    displayName: 'dualsync flow not pulled successfully for ${pullStaleAlertThresholdSeconds}s'
    description: 'A flow has not pulled successfully for more than ${pullStaleAlertThresholdSeconds} seconds. Runbook: docs/runbook.md#pull-failing. `dualsync status` shows its last error and since when.'
    severity: 2
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
          query: 'customMetrics | where name == "dualsync.since_last_pull" | extend flow = tostring(customDimensions["flow"]) | summarize since_last_pull = min(valueMin) by flow'
          timeAggregation: 'Minimum'
          metricMeasureColumn: 'since_last_pull'
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
          threshold: pullStaleAlertThresholdSeconds
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

// 1 while a flow is paused: after an auth failure (pull or apply; e.g. an expired client secret) or by an
// operator. Its messages wait on the queue; nothing is lost, nothing moves until `dualsync resume FLOW`.
resource pausedFlowAlert 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'flow-paused-${namePrefix}'
  location: location
  tags: tags
  properties: {
    displayName: 'dualsync flow paused'
    description: 'A flow is paused (an auth failure, or an operator paused it). Runbook: docs/runbook.md#flow-paused. `dualsync status` shows the reason.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT10M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'customMetrics | where name == "dualsync.flow_paused" | extend flow = tostring(customDimensions["flow"]) | summarize paused = max(valueMax) by flow'
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'paused'
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
          threshold: 0
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
