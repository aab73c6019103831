-- Argo CD health of any vmfleet.io object (VmFleet, VmTemplate, CloneStore, KvmHost), read from the conditions the
-- operator writes: Stalled or Degraded -> Degraded, Ready -> Healthy, anything else -> Progressing.
local hs = {}
local function say(c)
  if c.message == nil or c.message == "" then
    return c.reason
  end
  return c.reason .. ": " .. c.message
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the vmfleet operator to report"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local true_ = {}
local ready = nil
for _, c in ipairs(obj.status.conditions) do
  if c.status == "True" then
    true_[c.type] = c
  end
  if c.type == "Ready" then
    ready = c
  end
end
for _, kind in ipairs({"Stalled", "Degraded"}) do
  local c = true_[kind]
  if c ~= nil then
    hs.status = "Degraded"
    hs.message = say(c)
    return hs
  end
end
if true_["Ready"] ~= nil then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = say(ready)
else
  hs.message = "Waiting for the vmfleet operator to report"
end
return hs
