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

local TARGET = 'hippoai'              -- key of the node in "DicomModalities"
local OWN_MANUFACTURER = 'hippo-scp'  -- Manufacturer (0008,0070) of every result the node makes

-- Modalities never worth sending to the node: structured reports, segmentations, key object
-- selections and presentation states (the node analyses images only).
local NON_IMAGE_MODALITIES = { SR = true, SEG = true, KO = true, PR = true, RTSTRUCT = true }

-- Which series to send, by SeriesDescription: orthanc.json "HippoScp": {"RouteSeriesDescriptions":
-- [...]} (start_orthanc.sh fills it from $HIPPO_ROUTE_SERIES). Compared case-insensitively
-- and exactly, after trimming spaces. Empty or absent: every image series goes to the node,
-- which picks what to analyse by its own selection rules (ae_config.yaml); a list saves the
-- network and the node the series it would discard (Study1: 146 KiB instead of 45 MiB), and
-- the series it wants no longer queue behind the others. Keep the list within the node's rules.
local function Normalised(description)
  return string.lower((description or ''):match('^%s*(.-)%s*$'))
end

local function RoutedDescriptions()
  local ok, configuration = pcall(GetOrthancConfiguration)
  if not ok or type(configuration) ~= 'table' or type(configuration['HippoScp']) ~= 'table' then
    return nil
  end
  local listed = configuration['HippoScp']['RouteSeriesDescriptions']
  if type(listed) ~= 'table' then
    return nil
  end
  local wanted, count = {}, 0
  for _, description in pairs(listed) do
    wanted[Normalised(description)] = true
    count = count + 1
  end
  if count == 0 then
    return nil
  end
  return wanted
end

local ROUTED_DESCRIPTIONS = RoutedDescriptions()
if ROUTED_DESCRIPTIONS == nil then
  print('route_dicoms: routing every image series to ' .. TARGET)
else
  local names = {}
  for name, _ in pairs(ROUTED_DESCRIPTIONS) do
    table.insert(names, name)
  end
  table.sort(names)
  print('route_dicoms: routing only series described as (any case) ' .. table.concat(names, ', ') .. ' to ' .. TARGET)
end

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

-- Returns a reason (string) when the series must not be routed, nil otherwise.
local function ReasonNotToRoute(series, tags)
  if tags['Manufacturer'] == OWN_MANUFACTURER then
    return 'Manufacturer is ' .. OWN_MANUFACTURER .. ' (a result of the node)'
  end
  local modality = tags['Modality'] or ''
  if NON_IMAGE_MODALITIES[modality] then
    return 'Modality ' .. modality .. ' is not an image'
  end

  if ROUTED_DESCRIPTIONS ~= nil and not ROUTED_DESCRIPTIONS[Normalised(tags['SeriesDescription'])] then
    return 'SeriesDescription not in HippoScp.RouteSeriesDescriptions'
  end

  local nodeAet = TargetAet()
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
  local answer = RestApiPost('/modalities/' .. TARGET .. '/store', request)
  if answer == nil or answer == '' then
    print('route_dicoms: FAILED to queue series ' .. seriesId .. ' ' .. description .. ' -> ' .. TARGET)
    return
  end
  print('route_dicoms: series ' .. seriesId .. ' ' .. description .. ' (' .. #series['Instances'] .. ' instances, ' .. kib .. ' KiB) -> ' .. TARGET
        .. ' (job ' .. tostring(ParseJson(answer)['ID']) .. ')')
end
