-- Argo CD health for agentgraph.dev/AgentGraph, read from the operator's status conditions.
-- Install it in argocd-cm as resource.customizations.health.agentgraph.dev_AgentGraph (see the
-- README). Without it Argo CD shows every AgentGraph Healthy, an Infeasible one included.
local function conditions(o)
  local found = {}
  if o.status ~= nil and o.status.conditions ~= nil then
    for _, c in ipairs(o.status.conditions) do
      found[c.type] = c
    end
  end
  return found
end

local c = conditions(obj)
local errored = c["ReconcileError"]
if errored ~= nil and errored.status == "True" then  -- even before any plan was written
  return {status = "Degraded", message = errored.message}
end
local planned, infeasible = c["Planned"], c["Infeasible"]
if planned == nil and infeasible == nil then
  return {status = "Progressing", message = "waiting for the operator to plan it"}
end
local seen = (planned ~= nil and planned.observedGeneration)
  or (infeasible ~= nil and infeasible.observedGeneration) or nil
if obj.metadata.generation ~= nil and seen ~= obj.metadata.generation then
  return {status = "Progressing",
          message = "the operator has not planned generation " .. obj.metadata.generation .. " yet"}
end
if infeasible ~= nil and infeasible.status == "True" then
  return {status = "Degraded", message = infeasible.message}
end
local admitted = c["Admitted"]
if admitted ~= nil and admitted.status == "False" then
  return {status = "Suspended", message = admitted.message}
end
local sla = c["SLAMet"]
if sla ~= nil and sla.status == "False" and sla.reason == "MeasuredOverSLA" then
  return {status = "Degraded", message = sla.message}
end
local ready = c["Ready"]
if ready ~= nil and ready.status == "True" then
  return {status = "Healthy", message = "Ready"}
end
return {status = "Progressing", message = "rolling out the plan"}
