-- route_dicoms_per_instance.lua: the course's routing, one SendToModality() per stored
-- instance, kept for comparison with route_dicoms.lua (select it with ORTHANC_ROUTING=instance).
--
-- It works, but Orthanc 1.10 groups the Lua sends into one job / one association while it is
-- busy, so the node receives instances of several series (and studies) mixed in a single
-- association, and a series may also be split over several associations. The node copes
-- (it groups by SeriesInstanceUID and waits --settle seconds of quiet), but it cannot know a
-- series is complete when the association is released. Prefer route_dicoms.lua.
--
-- Loop protection is the same as in route_dicoms.lua: never send back what the node made.

local TARGET = 'hippoai'
local OWN_MANUFACTURER = 'hippo-scp'
local NON_IMAGE_MODALITIES = { SR = true, SEG = true, KO = true, PR = true, RTSTRUCT = true }

local targetAet = nil

local function TargetAet()
  if targetAet == nil then
    local ok, answer = pcall(RestApiGet, '/modalities/' .. TARGET .. '/configuration')
    if ok and answer ~= nil and answer ~= '' then
      targetAet = ParseJson(answer)['AET']
    end
  end
  return targetAet
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  -- Instances that Lua itself created/modified must not trigger another send.
  if origin ~= nil and origin['RequestOrigin'] == 'Lua' then
    return
  end
  if tags['Manufacturer'] == OWN_MANUFACTURER then
    return
  end
  if NON_IMAGE_MODALITIES[tags['Modality'] or ''] then
    return
  end
  local nodeAet = TargetAet()
  if origin ~= nil and nodeAet ~= nil and origin['RemoteAet'] == nodeAet then
    return
  end
  SendToModality(instanceId, TARGET)
end
