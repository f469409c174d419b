-- route_dicoms.lua: Orthanc -> hippo-scp routing, ONE association per series.
--
-- Every series that becomes stable (no new instance for "StableAge" seconds, see orthanc.json)
-- is sent to the DICOM modality "hippoai" (the hippo-scp node) as one C-STORE job, i.e. one
-- association carrying exactly that series. The node's own results (SR / SEG / Secondary
-- Capture report) are never routed back, so nothing loops.
--
-- Compared with route_dicoms_per_instance.lua (the default, ORTHANC_ROUTING=instance):
--   * the node receives each series complete, in one association, and files the results as
--     soon as the association is released (start_listener.sh names Orthanc a whole-series
--     sender: no release grace) -- no guessing whether more slices are still coming;
--   * one job per series = one entry in /jobs to monitor or retry, instead of one per batch;
--   * loop protection is decided once per series, with the full instance metadata at hand;
--   * but it is slower: a series leaves only once Orthanc finds it stable, and Orthanc checks
--     that once a second with ages in whole seconds (2.4-3.3 s after the last image for
--     StableAge 2; SR queryable after 3.4 s instead of 2.2 s for Study1's HippoCrop).
-- Measured on Orthanc 1.10.1 (see tests/deploy): per-series routing sends Study1's 5 series in
-- 5 associations; per-instance routing sends them in 1 association mixing all 5 series.
--
-- Notes on the Orthanc 1.10 Lua API:
--   * SendToModality() accepts instance IDs only: given a series ID it fails while the job
--     still reports success. Hence the REST call /modalities/{id}/store below, which takes a
--     series and sends all its instances in one association.
--   * "Asynchronous": true returns at once with a job ID; the Lua thread is not blocked while
--     the series travels (Orthanc serialises all Lua callbacks on one thread).
--   * "Priority" (higher runs first) orders the jobs that wait for one of the
--     "ConcurrentJobs" slots: smallest series first, by bytes on disk (priority = -KiB; the
--     number of instances would be wrong: Study1's HippoCrop has the most slices, 32 of 51x35
--     pixels, yet is 75x smaller than any other series). The series of a study usually become
--     stable in the same check; the first ConcurrentJobs of them start as soon as they are
--     queued, whatever their size, and the rest then go smallest first, so a cropped volume
--     or a localiser does not wait behind every 500-slice series (docs/benchmarks.md).

HippoRoute.AnnounceFilter('route_dicoms', 'every image series', 'series')

-- Returns a reason (string) when the series must not be routed, nil otherwise.
local function ReasonNotToRoute(series, tags)
  if tags['Manufacturer'] == HippoRoute.OWN_MANUFACTURER then
    return 'Manufacturer is ' .. HippoRoute.OWN_MANUFACTURER .. ' (a result of the node)'
  end
  local modality = tags['Modality'] or ''
  if HippoRoute.NON_IMAGE_MODALITIES[modality] then
    return 'Modality ' .. modality .. ' is not an image'
  end

  if not HippoRoute.IsRoutedDescription(tags['SeriesDescription']) then
    return 'SeriesDescription not in HippoScp.RouteSeriesDescriptions'
  end

  local nodeAet = HippoRoute.TargetAet()
  for _, instanceId in ipairs(series['Instances']) do
    local metadata = ParseJson(RestApiGet('/instances/' .. instanceId .. '/metadata?expand'))
    -- RemoteAET is the calling AE title of the C-STORE that brought the instance in.
    if nodeAet ~= nil and metadata['RemoteAET'] == nodeAet then
      return 'instance ' .. instanceId .. ' was sent by the node (' .. nodeAet .. ')'
    end
    -- Instances created inside Orthanc (Lua, plugins such as STOW-RS) carry no RemoteAET; the
    -- Manufacturer check above covers results uploaded that way.
  end
  return nil
end

function OnStableSeries(seriesId, tags, metadata)
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local reason = ReasonNotToRoute(series, tags)
  local description = (tags['SeriesDescription'] or '') .. ' [' .. (tags['Modality'] or '?') .. ']'
  if reason ~= nil then
    print('route_dicoms: not routing series ' .. seriesId .. ' ' .. description .. ': ' .. reason)
    return
  end
  -- Built by hand: DumpJson() writes every Lua number as a real (-32.0), and Orthanc 1.10
  -- refuses a non-integer "Priority" ("Integer value expected in field: Priority").
  local statistics = ParseJson(RestApiGet('/series/' .. seriesId .. '/statistics'))
  local kib = math.floor((tonumber(statistics['DiskSize']) or 0) / 1024)
  local request = string.format('{"Resources": ["%s"], "Asynchronous": true, "Priority": %d}',
                                seriesId, -kib)
  local answer = RestApiPost('/modalities/' .. HippoRoute.TARGET .. '/store', request)
  if answer == nil or answer == '' then
    print('route_dicoms: FAILED to queue series ' .. seriesId .. ' ' .. description .. ' -> ' .. HippoRoute.TARGET)
    return
  end
  print('route_dicoms: series ' .. seriesId .. ' ' .. description .. ' (' .. #series['Instances'] .. ' instances, ' .. kib .. ' KiB) -> ' .. HippoRoute.TARGET
        .. ' (job ' .. tostring(ParseJson(answer)['ID']) .. ')')
end
