-- route_dicoms_per_instance.lua: Orthanc -> hippo-scp routing, each image as it is stored
-- (ORTHANC_ROUTING=instance, the default; route_dicoms.lua routes whole stable series instead).
--
-- OnStoredInstance + SendToModality(), as in Orthanc's auto-routing sample, limited to the
-- series the node analyses (HippoScp.RouteSeriesDescriptions, filled from the node's selection
-- rules by start_orthanc.sh). Orthanc 1.10 groups the Lua sends into one job and one
-- association while images keep coming, and releases it DicomAssociationCloseDelay seconds
-- after the last one: the node receives each series while the scanner is still sending and
-- can analyse it about a second after the last image, where route_dicoms.lua first waits for
-- Orthanc's StableAge check (whole seconds, checked once a second: 2.4-3.3 s for StableAge 2).
-- Measured for Study1's HippoCrop: SR queryable 2.2 s after the last image vs 3.4 s
-- (docs/benchmarks.md).
--
-- The price: one association may carry several series (and studies), and a series may be split
-- over associations (a pause longer than the close delay, a job full at 1000 images). The node
-- copes -- it groups by SeriesInstanceUID, keeps its release grace for Orthanc, and falls back
-- on its settle window when a series came over several associations -- and is tested so.
--
-- Loop protection is the same as in route_dicoms.lua: never send back what the node made.
-- Needs route_common.lua (loaded before it by common.sh).

HippoRoute.AnnounceFilter('route_dicoms_per_instance', 'every image instance',
                          'instances of series')

function OnStoredInstance(instanceId, tags, metadata, origin)
  -- Instances that Lua itself created/modified must not trigger another send.
  if origin ~= nil and origin['RequestOrigin'] == 'Lua' then
    return
  end
  if tags['Manufacturer'] == HippoRoute.OWN_MANUFACTURER then
    return
  end
  if HippoRoute.NON_IMAGE_MODALITIES[tags['Modality'] or ''] then
    return
  end
  if not HippoRoute.IsRoutedDescription(tags['SeriesDescription']) then
    return
  end
  local nodeAet = HippoRoute.TargetAet()
  if origin ~= nil and nodeAet ~= nil and origin['RemoteAet'] == nodeAet then
    return
  end
  SendToModality(instanceId, HippoRoute.TARGET)
end
