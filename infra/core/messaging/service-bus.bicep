// Service Bus Standard namespace with local (SAS) auth disabled, and every queue the code uses.
param name string
param location string
param tags object = {}

@description('Queues the code uses (app setting APPLY_QUEUE).')
param queueNames array

@minValue(1)
param maxDeliveryCount int = 10

@description('ISO 8601 duration, 20 seconds to 7 days.')
param duplicateDetectionWindow string = 'PT10M'

param messageTimeToLive string = 'P14D'

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    // Entra ID only: no SAS keys, so no connection string can exist to leak.
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queues 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [for queue in queueNames: {
  parent: namespace
  name: queue
  properties: {
    // The longest Service Bus allows. The host renews it (host.json maxAutoLockRenewalDuration) only for
    // single-message functions (SETTLEMENT_MODE=ledger); a batch (extension mode) renews its own locks while it
    // runs (shared/engine/lock_renewal.py), each a third of the lock after the last, within functionTimeout.
    lockDuration: 'PT5M'
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: messageTimeToLive
    // An expired message goes to the dead-letter queue with its reason, never silently away.
    deadLetteringOnMessageExpiration: true
    // message_id = flow:key:version, so a re-sent change (crash between enqueue and cursor advance) is dropped.
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    // requiresDuplicateDetection and requiresSession are fixed when the queue is created: Service Bus cannot
    // change them on an existing queue. Changing either means deleting and recreating the queue (drain it
    // and its dead-letter queue first); a redeployment with a different value fails.
    requiresDuplicateDetection: true
    requiresSession: false
    enablePartitioning: false
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}]

output id string = namespace.id
output name string = namespace.name
@description('https://<namespace>.servicebus.windows.net:443/')
output endpoint string = namespace.properties.serviceBusEndpoint
