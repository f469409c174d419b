-- route_common.lua: what both routing scripts share (loaded first; see common.sh). Orthanc runs
-- every script of "LuaScripts" in one Lua context, so this table is visible to the router
-- loaded after it (route_dicoms_per_instance.lua or route_dicoms.lua).

HippoRoute = {}

HippoRoute.TARGET = 'hippoai'              -- key of the node in "DicomModalities"
HippoRoute.OWN_MANUFACTURER = 'hippo-scp'  -- Manufacturer (0008,0070) of every result the node makes

-- Modalities never worth sending to the node: structured reports, segmentations, key object
-- selections and presentation states (the node analyses images only).
HippoRoute.NON_IMAGE_MODALITIES = { SR = true, SEG = true, KO = true, PR = true, RTSTRUCT = true }

-- Which series to send, by SeriesDescription: orthanc.json "HippoScp": {"RouteSeriesDescriptions":
-- [...]} (start_orthanc.sh fills it from $HIPPO_ROUTE_SERIES, by default what the node's
-- selection rules analyse: `hippo-scp route-filter`). Compared case-insensitively and exactly,
-- after trimming spaces. Empty or absent: every image series goes to the node, which picks what
-- to analyse by its own rules; a list saves the network and the node the series it would
-- discard (Study1: 146 KiB instead of 45 MiB). Keep the list within the node's rules.
local function Normalised(description)
  return string.lower((description or ''):match('^%s*(.-)%s*$'))
end

local function RoutedDescriptions()
  local ok, configuration = pcall(GetOrthancConfiguration)
  if not ok or type(configuration) ~= 'table' or type(configuration['HippoScp']) ~= 'table' then
    return nil
  end
  local listed = configuration['HippoScp']['RouteSeriesDescriptions']
  if type(listed) ~= 'table' or next(listed) == nil then
    return nil
  end
  local wanted = {}
  for _, description in pairs(listed) do
    wanted[Normalised(description)] = true
  end
  return wanted
end

local ROUTED_DESCRIPTIONS = RoutedDescriptions()

-- Whether a series with this SeriesDescription may go to the node.
function HippoRoute.IsRoutedDescription(description)
  return ROUTED_DESCRIPTIONS == nil or ROUTED_DESCRIPTIONS[Normalised(description)] == true
end

-- One start-up line saying what is routed: "<script>: routing <everything | only <what>
-- described as (any case) a, b> to hippoai".
function HippoRoute.AnnounceFilter(script, everything, what)
  if ROUTED_DESCRIPTIONS == nil then
    print(script .. ': routing ' .. everything .. ' to ' .. HippoRoute.TARGET)
    return
  end
  local names = {}
  for name, _ in pairs(ROUTED_DESCRIPTIONS) do
    table.insert(names, name)
  end
  table.sort(names)
  print(script .. ': routing only ' .. what .. ' described as (any case) '
        .. table.concat(names, ', ') .. ' to ' .. HippoRoute.TARGET)
end

-- The node's AE title (looked up once it answers): instances it sent are never routed back.
local targetAet = nil
function HippoRoute.TargetAet()
  if targetAet == nil then
    local ok, answer = pcall(RestApiGet, '/modalities/' .. HippoRoute.TARGET .. '/configuration')
    if ok and answer ~= nil and answer ~= '' then
      targetAet = ParseJson(answer)['AET']
    end
  end
  return targetAet
end
